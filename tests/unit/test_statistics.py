"""pneumo.evaluation.statistics: intervals, the patient bootstrap, McNemar and the decision curve,
each against a value worked out by hand or by scikit-learn."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pneumo.evaluation.statistics import (
    FEW_PATIENTS,
    PatientBootstrap,
    auroc_with_interval,
    decision_curve,
    figures_with_intervals,
    interval_to_quote,
    mcnemar,
    paired_auroc_difference,
    weighted_auroc,
    wilson,
)
from pneumo.model.metrics import metrics_at


def wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z the 97.5th normal percentile."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_wilson_interval_matches_the_formula_worked_by_hand():
    low, high = wilson(45, 50)
    assert (low, high) == pytest.approx(wilson_by_hand(45, 50), abs=1e-12)
    assert (low, high) == pytest.approx((0.78640, 0.95652), abs=1e-5)  # 45 of 50: 0.9
    assert wilson(50, 50)[1] == pytest.approx(1.0) and wilson(0, 50)[0] == pytest.approx(0.0)
    assert all(math.isnan(b) for b in wilson(0, 0))  # nothing to count


def test_mcnemar_on_a_hand_made_table():
    # 10 films: 2 both right, 1 only A right, 6 only B right, 1 both wrong
    a = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], bool)
    b = np.array([1, 1, 0, 1, 1, 1, 1, 1, 1, 0], bool)
    result = mcnemar(a, b)
    assert (result["both_correct"], result["a_only"], result["b_only"], result["both_wrong"]) == (2, 1, 6, 1)
    # exact: two-sided, P(X <= 1 | 7 discordant, p = 1/2) doubled = 2 * (1 + 7) / 2^7
    assert result["p_value"] == pytest.approx(2 * (1 + 7) / 2**7)
    assert mcnemar(a, a)["p_value"] == 1.0  # no discordant film: no evidence of a difference


def test_decision_curve_net_benefit_by_hand():
    probs = np.array([0.9, 0.8, 0.3, 0.6, 0.1])
    truth = np.array([1, 1, 1, 0, 0])
    rows = {row["threshold"]: row for row in decision_curve(probs, truth, [0.25, 0.5, 0.95])}
    # pt = 0.5 (odds 1): 0.9, 0.8, 0.6 called; TP 2, FP 1 of 5 films
    assert rows[0.5]["model"] == pytest.approx(2 / 5 - 1 / 5 * 1)
    assert rows[0.5]["treat_all"] == pytest.approx(3 / 5 - 2 / 5 * 1)
    # pt = 0.25 (odds 1/3): 0.9, 0.8, 0.3, 0.6 called; TP 3, FP 1
    assert rows[0.25]["model"] == pytest.approx(3 / 5 - 1 / 5 / 3)
    assert rows[0.25]["treat_all"] == pytest.approx(3 / 5 - 2 / 5 / 3)
    # pt = 0.95: nothing called, as treat-none
    assert rows[0.95]["model"] == 0.0 and rows[0.95]["treat_none"] == 0.0
    with pytest.raises(ValueError):
        decision_curve(probs, truth, [1.0])


def test_weighted_auroc_is_the_auroc_of_the_repeated_films():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60), 1)  # many ties, counted half
    weights = rng.integers(0, 4, size=(20, 60)).astype(float)
    for row, auroc in zip(weights, weighted_auroc(weights, scores, truth)):
        films = np.repeat(np.arange(60), row.astype(int))
        assert auroc == pytest.approx(roc_auc_score(truth[films], scores[films]), abs=1e-12)
    assert math.isnan(weighted_auroc(np.ones((1, 3)), np.array([0.1, 0.2, 0.3]), np.ones(3))[0])


def test_bootstrap_draws_patients_within_each_class():
    patients = ["a", "a", "b", "c", "c", "c", "d", "e"]
    positive = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    boot = PatientBootstrap.draw(patients, positive, draws=300, seed=1)
    assert boot.patients_by_class == (2, 3)  # c, d negative; a, b, e positive
    weights = boot.film_weights()
    # a patient's films are drawn together, as often as the patient
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 5]).all()
    # every draw holds as many patients of each class as the split does
    per_patient = boot.counts
    classes = np.array([1, 1, 0, 0, 1])  # a b c d e, sorted
    assert (per_patient[:, classes == 1].sum(axis=1) == 3).all()
    assert (per_patient[:, classes == 0].sum(axis=1) == 2).all()


def _clustered(films_per_patient: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """60 positive and 60 negative patients, each with ``films_per_patient`` identical films
    (probabilities drawn per patient): the patients, and the same films named one patient each."""
    rng = np.random.default_rng(seed)
    truth = np.repeat([1, 0], 60)
    score = np.clip(rng.normal(0.62 * truth + 0.3, 0.2), 0, 1)
    probs = np.repeat(score, films_per_patient)
    positive = np.repeat(truth, films_per_patient)
    patients = [f"p{i}" for i in np.repeat(np.arange(truth.size), films_per_patient)]
    films = [f"film{i}" for i in range(probs.size)]
    return probs, positive, patients, films


def test_bootstrap_resamples_patients_not_films():
    probs, positive, patients, films = _clustered(films_per_patient=3)
    by_patient = PatientBootstrap.draw(patients, positive, seed=0)
    by_film = PatientBootstrap.draw(films, positive, seed=0)
    assert by_patient.patients_by_class == (60, 60) and by_film.patients_by_class == (180, 180)

    def width(bounds):
        return bounds[1] - bounds[0]

    auroc_patients = auroc_with_interval(probs, positive, by_patient)["bootstrap"]
    auroc_films = auroc_with_interval(probs, positive, by_film)["bootstrap"]
    # three identical films per child carry the information of one: about sqrt(3) wider
    assert width(auroc_patients) > 1.4 * width(auroc_films)
    at_patients = figures_with_intervals(probs, positive, 0.5, by_patient)
    at_films = figures_with_intervals(probs, positive, 0.5, by_film)
    for figure in ("acc", "sensitivity", "specificity"):
        assert width(at_patients[figure]["bootstrap"]) > 1.2 * width(at_films[figure]["bootstrap"]), figure
        # Wilson counts films whatever the patients: the same for both
        assert at_patients[figure]["wilson"] == at_films[figure]["wilson"]


def test_bootstrap_is_seeded():
    probs, positive, patients, _ = _clustered(films_per_patient=3, seed=5)
    first = auroc_with_interval(probs, positive, PatientBootstrap.draw(patients, positive, seed=7))
    again = auroc_with_interval(probs, positive, PatientBootstrap.draw(patients, positive, seed=7))
    other = auroc_with_interval(probs, positive, PatientBootstrap.draw(patients, positive, seed=8))
    assert first == again
    assert first["bootstrap"] != other["bootstrap"]
    assert first["estimate"] == pytest.approx(roc_auc_score(positive, probs))


def test_figures_agree_with_the_metrics_and_their_intervals_cover_them():
    probs, positive, patients, _ = _clustered(films_per_patient=2, seed=2)
    boot = PatientBootstrap.draw(patients, positive, seed=0)
    figures = figures_with_intervals(probs, positive, 0.47, boot)
    plain = metrics_at(torch.tensor(probs), torch.tensor(positive), 0.47)
    for name, row in figures.items():
        assert row["estimate"] == pytest.approx(plain[name]), name
        low, high = row["bootstrap"]
        assert low <= row["estimate"] <= high, name
    tn, fp = plain["confusion_matrix"][0]
    fn, tp = plain["confusion_matrix"][1]
    assert (figures["npv"]["k"], figures["npv"]["n"]) == (tn, tn + fn)
    assert (figures["precision"]["k"], figures["precision"]["n"]) == (tp, tp + fp)
    assert figures["f1"]["wilson"] is None  # not a proportion of films


def test_paired_difference_of_a_model_with_itself_is_zero():
    probs, positive, patients, _ = _clustered(films_per_patient=2, seed=4)
    boot = PatientBootstrap.draw(patients, positive, seed=0)
    same = paired_auroc_difference(probs, probs, positive, boot)
    assert same["difference"] == 0.0 and same["bootstrap"] == [0.0, 0.0]
    noisy = np.clip(probs + np.random.default_rng(0).normal(0, 0.3, probs.size), 0, 1)
    worse = paired_auroc_difference(probs, noisy, positive, boot)
    assert worse["difference"] > 0 and worse["bootstrap"][0] < worse["difference"] < worse["bootstrap"][1]


def test_two_thousand_draws_over_a_test_split_sized_set_give_finite_nested_intervals():
    """Kermany's test split's size: 624 films (234 normal, 390 pneumonia), children with 1 to 3
    films (its speed is printed by scripts/bootstrap_benchmark.py, not asserted here)."""
    rng = np.random.default_rng(0)
    truth = np.r_[np.zeros(234, int), np.ones(390, int)]
    probs = np.clip(rng.normal(0.3 + 0.4 * truth, 0.2), 0, 1)
    patients = [f"p{i // (1 + i % 3)}-{t}" for i, t in enumerate(truth)]
    boot = PatientBootstrap.draw(patients, truth, draws=2000, seed=0)
    auroc = auroc_with_interval(probs, truth, boot)
    low, high = auroc["bootstrap"]
    assert np.isfinite([low, high]).all() and low < auroc["estimate"] < high


def test_draws_where_a_figure_is_undefined_are_counted_beside_its_interval():
    # 10 normal and 10 pneumonia single-film patients; one pneumonia film alone is called
    # positive. Precision (tp / (tp + fp)) exists only in draws that hold that film's patient:
    # one of 10 drawn 10 times with replacement is missed with probability 0.9^10 = 0.3487, so
    # about 2000 * 0.6513 = 1302.6 draws of 2000 are usable (binomial sd 21.3)
    probs = np.array([0.1] * 10 + [0.9] + [0.2] * 9)
    positive = np.array([0] * 10 + [1] * 10)
    patients = [f"p{i}" for i in range(20)]
    boot = PatientBootstrap.draw(patients, positive, draws=2000, seed=0)
    figures = figures_with_intervals(probs, positive, 0.5, boot)
    usable = figures["precision"]["bootstrap_draws"]
    assert usable == int((boot.counts[:, boot.film_patient[10]] > 0).sum())  # the draws holding p10
    assert abs(usable - 1302.6) < 4 * 21.3
    assert figures["sensitivity"]["bootstrap_draws"] == 2000  # always 10 pneumonia films to count

    # every normal film belongs to one mostly-pneumonia patient "m" (1 normal, 3 pneumonia
    # films), so no patient is negative and a draw without "m" has no normal film, no AUROC:
    # of 4 patients drawn 4 times, "m" is missed with probability (3/4)^4 = 0.3164, so about
    # 2000 * 0.6836 = 1367.2 draws are usable (sd 20.8)
    probs = np.array([0.2, 0.6, 0.7, 0.8, 0.9, 0.65, 0.75])
    positive = np.array([0, 1, 1, 1, 1, 1, 1])
    patients = ["m", "m", "m", "m", "a", "b", "c"]
    boot = PatientBootstrap.draw(patients, positive, draws=2000, seed=0)
    auroc = auroc_with_interval(probs, positive, boot)
    assert boot.describe()["patients_negative"] == 0
    assert auroc["bootstrap_draws"] == int((boot.counts[:, boot.film_patient[0]] > 0).sum())  # holding "m"
    assert abs(auroc["bootstrap_draws"] - 1367.2) < 4 * 20.8


def test_the_interval_to_quote_is_wilson_where_the_bootstrap_collapses_or_patients_are_few():
    # 390 of 390 pneumonia films called positive (390 single-film patients, 100 normal ones):
    # every draw gives 1, the bootstrap is [1, 1]; Wilson's lower bound is
    # n / (n + z^2) = 390 / (390 + 1.96^2) = 0.99025, its upper 1
    probs = np.array([0.1] * 100 + [0.9] * 390)
    positive = np.array([0] * 100 + [1] * 390)
    boot = PatientBootstrap.draw([f"p{i}" for i in range(490)], positive, draws=500, seed=0)
    sensitivity = figures_with_intervals(probs, positive, 0.5, boot)["sensitivity"]
    assert sensitivity["bootstrap"] == [1.0, 1.0]
    assert sensitivity["wilson"] == pytest.approx([390 / (390 + 1.959963984540054**2), 1.0], abs=1e-9)
    assert sensitivity["quote"] == "wilson"

    # 30 single-film pneumonia patients, 28 found (sensitivity 0.933): a class of 30 patients
    # is few (the bootstrap under-covers there), so Wilson; 31 patients, 29 found: the bootstrap
    for found, missed in ((28, 2), (29, 2)):
        probs = np.array([0.1] * 40 + [0.9] * found + [0.2] * missed)
        positive = np.array([0] * 40 + [1] * (found + missed))
        boot = PatientBootstrap.draw([f"p{i}" for i in range(probs.size)], positive, draws=200, seed=0)
        figures = figures_with_intervals(probs, positive, 0.5, boot)
        expected = "wilson" if found + missed <= FEW_PATIENTS else "bootstrap"
        assert (found + missed, figures["sensitivity"]["quote"]) == (found + missed, expected)
        assert figures["specificity"]["quote"] == "wilson"  # 40 of 40 normal films cleared
    assert FEW_PATIENTS == 30
    assert interval_to_quote(None, None, 500) == "bootstrap"  # F1: no Wilson interval
