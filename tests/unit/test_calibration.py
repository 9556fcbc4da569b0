import math

import matplotlib.pyplot as plt
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from pneumo.model.calibration import (
    MIN_FILMS_PER_CLASS,
    TEMPERATURE_BOUNDS,
    apply_temperature,
    calibration_report,
    fit_temperature,
    margin_from_probability,
    plot_reliability,
)

N = 20_000
OVERCONFIDENCE = 3.0


def logistic_films(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """True margins and labels drawn from them: ``label ~ Bernoulli(sigmoid(z_true))``."""
    generator = torch.Generator().manual_seed(seed)
    z_true = 2.0 * torch.randn(N, generator=generator, dtype=torch.float64)
    labels = torch.bernoulli(torch.sigmoid(z_true), generator=generator).long()
    return z_true, labels


def overconfident_films(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 margins three times too far from 0, as a network's would be."""
    z_true, labels = logistic_films(seed)
    return (OVERCONFIDENCE * z_true).float(), labels


def test_fit_temperature_recovers_the_overconfidence():
    margins, labels = overconfident_films()
    assert fit_temperature(margins, labels) == pytest.approx(OVERCONFIDENCE, rel=0.1)


def test_fit_temperature_leaves_calibrated_margins_alone():
    z_true, labels = logistic_films(seed=1)
    assert fit_temperature(z_true, labels) == pytest.approx(1.0, rel=0.1)


def test_temperature_keeps_ranking_and_sides():
    margins, labels = overconfident_films()
    margins = margins.double()  # float64: no two films' probabilities rounded to the same value
    temperature = fit_temperature(margins, labels)
    calibrated = apply_temperature(margins, temperature)
    assert float(binary_auroc(calibrated, labels)) == pytest.approx(
        float(binary_auroc(torch.sigmoid(margins), labels)), abs=1e-12
    )
    assert torch.equal(calibrated > 0.5, margins > 0)
    assert torch.equal(calibrated < 0.5, margins < 0)
    # and it does move the probabilities: closer to 0.5 than before
    assert (calibrated - 0.5).abs().mean() < (torch.sigmoid(margins) - 0.5).abs().mean()


@pytest.mark.parametrize(
    "margins, labels",
    [
        (torch.tensor([-2.0, 0.5, 3.0]), torch.tensor([1, 1, 1])),
        (torch.tensor([-2.0, 0.5, 3.0]), torch.tensor([0, 0, 0])),
        (torch.tensor([1.5]), torch.tensor([1])),
        (torch.tensor([]), torch.tensor([])),
        (torch.tensor([-2.0, float("nan"), 3.0]), torch.tensor([0, 1, 1])),
        (torch.tensor([-2.0, float("inf"), 3.0]), torch.tensor([0, 1, 1])),
    ],
)
def test_fit_temperature_gives_1_where_there_is_nothing_to_fit(margins, labels):
    assert fit_temperature(margins, labels) == 1.0


def test_separated_classes_are_left_uncalibrated_not_sharpened():
    # no error shown yet: the fit would shrink T to its bound and make the model surer still
    assert fit_temperature(torch.tensor([-3.0, -1.0, 1.0, 3.0]), torch.tensor([0, 0, 1, 1])) == 1.0
    # films of both classes on both sides: a temperature to fit
    margins = torch.linspace(-3, 3, 24)
    labels = torch.tensor([0, 1] * 3 + [0] * 6 + [1] * 6 + [1, 0] * 3)
    assert fit_temperature(margins, labels) not in (1.0, *TEMPERATURE_BOUNDS)


def test_too_few_films_of_a_class_are_left_uncalibrated():
    margins = torch.cat([torch.linspace(-3, 1, 30), torch.linspace(-1, 3, MIN_FILMS_PER_CLASS - 1)])
    labels = torch.cat([torch.zeros(30), torch.ones(MIN_FILMS_PER_CLASS - 1)]).long()
    assert fit_temperature(margins, labels) == 1.0


def test_apply_temperature_keeps_the_dtype_and_divides_the_margin():
    margins = torch.tensor([-4.0, 0.0, 2.0], dtype=torch.float32)
    calibrated = apply_temperature(margins, 2.0)
    assert calibrated.dtype == torch.float32
    assert calibrated.tolist() == pytest.approx([1 / (1 + math.e**2), 0.5, 1 / (1 + math.e**-1)])
    # computed in float64, rounded once: not float32's own sigmoid, which is off in the last bit
    assert torch.equal(apply_temperature(margins, 1.0), torch.sigmoid(margins.double()).float())
    with pytest.raises(ValueError):
        apply_temperature(margins, 0.0)


def test_margin_from_probability_inverts_the_sigmoid_and_stays_finite():
    assert margin_from_probability(0.5) == 0.0
    assert margin_from_probability(0.8) == pytest.approx(math.log(4))
    assert margin_from_probability(1 / (1 + math.e**1.5)) == pytest.approx(-1.5)
    assert margin_from_probability(1.0) == pytest.approx(math.log(1e12), rel=1e-6)
    assert margin_from_probability(0.0) == pytest.approx(-math.log(1e12), rel=1e-6)
    probs = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float32)
    margins = margin_from_probability(probs)
    assert margins.dtype == torch.float32 and torch.isfinite(margins).all()
    assert margins[1:3].tolist() == pytest.approx([-math.log(3), 0.0])


def test_a_threshold_moved_to_the_margin_scale_keeps_its_films():
    margins, _ = overconfident_films()
    threshold = 0.3
    cut = margin_from_probability(threshold)
    # away from the cut itself, where rounding alone decides
    margins = margins[(margins.double() - cut).abs() > 1e-4]
    assert torch.equal(torch.sigmoid(margins.double()) >= threshold, margins >= cut)


def test_ece_and_brier_by_hand():
    probs = torch.tensor([0.8, 0.1, 0.4, 0.35])
    labels = torch.tensor([1, 0, 1, 0])
    report = calibration_report(probs, labels, bins=2)
    # sorted: (0.1, 0) (0.35, 0) | (0.4, 1) (0.8, 1)
    # bin 1: mean p 0.225, observed 0; bin 2: mean p 0.6, observed 1
    assert report["ece"] == pytest.approx(0.5 * 0.225 + 0.5 * 0.4)
    assert report["brier"] == pytest.approx((0.2**2 + 0.1**2 + 0.6**2 + 0.35**2) / 4)
    assert report["reliability"] == [
        {"p_mean": pytest.approx(0.225), "observed": 0.0, "n": 2},
        {"p_mean": pytest.approx(0.6), "observed": 1.0, "n": 2},
    ]
    assert report["bins"] == 2 and report["binning"] == "equal-mass"


def test_ece_weighs_unequal_bins_by_their_films():
    # five films in two bins: array_split makes them 3 and 2
    probs = torch.tensor([0.1, 0.2, 0.3, 0.7, 0.9])
    labels = torch.tensor([0, 1, 0, 1, 0])
    report = calibration_report(probs, labels, bins=2)
    expected = 3 / 5 * abs(1 / 3 - 0.2) + 2 / 5 * abs(1 / 2 - 0.8)
    assert report["ece"] == pytest.approx(expected)
    assert [point["n"] for point in report["reliability"]] == [3, 2]


def test_fewer_films_than_bins_leave_no_empty_bin():
    report = calibration_report(torch.tensor([0.2, 0.9]), torch.tensor([0, 1]), bins=10)
    assert [point["n"] for point in report["reliability"]] == [1, 1]
    assert report["ece"] == pytest.approx((0.2 + 0.1) / 2)


def test_calibrated_probabilities_have_slope_1_and_intercept_0():
    z_true, labels = logistic_films(seed=2)
    report = calibration_report(torch.sigmoid(z_true).float(), labels)
    assert report["calibration_slope"] == pytest.approx(1.0, abs=0.1)
    assert report["calibration_intercept"] == pytest.approx(0.0, abs=0.1)
    assert report["ece"] < 0.02


def test_temperature_brings_the_slope_back_to_1():
    margins, labels = overconfident_films()
    before = calibration_report(torch.sigmoid(margins), labels)
    after = calibration_report(apply_temperature(margins, fit_temperature(margins, labels)), labels)
    assert before["calibration_slope"] == pytest.approx(1 / OVERCONFIDENCE, abs=0.05)
    assert after["calibration_slope"] == pytest.approx(1.0, abs=0.1)
    assert after["calibration_intercept"] == pytest.approx(0.0, abs=0.1)
    assert after["ece"] < before["ece"] and after["brier"] < before["brier"]


@pytest.mark.parametrize(
    "probs, labels",
    [
        (torch.tensor([0.2, 0.6, 0.9]), torch.tensor([1, 1, 1])),  # one class
        (torch.tensor([0.2, 0.3, 0.7, 0.9]), torch.tensor([0, 0, 1, 1])),  # separated
        (torch.tensor([0.4, 0.4, 0.4]), torch.tensor([0, 1, 1])),  # one probability for all
    ],
)
def test_slope_without_a_maximum_likelihood_fit_is_nan(probs, labels):
    report = calibration_report(probs, labels, bins=2)
    assert math.isnan(report["calibration_slope"]) and math.isnan(report["calibration_intercept"])
    assert math.isfinite(report["brier"]) and math.isfinite(report["ece"])


def test_no_films_give_nan_not_an_error():
    report = calibration_report(torch.tensor([]), torch.tensor([]))
    for key in ("brier", "ece", "calibration_slope", "calibration_intercept"):
        assert math.isnan(report[key])
    assert report["reliability"] == []


def test_reliability_diagram_has_the_diagonal_and_one_line_per_report(tmp_path):
    margins, labels = overconfident_films()
    reports = {
        "before": calibration_report(torch.sigmoid(margins), labels),
        "after": calibration_report(apply_temperature(margins, fit_temperature(margins, labels)), labels),
    }
    fig = plot_reliability(reports, tmp_path / "reliability.png")
    try:
        assert isinstance(fig, plt.Figure)
        (ax,) = fig.axes
        assert len(ax.lines) == len(reports) + 1
        assert list(ax.lines[0].get_xdata()) == [0, 1] and list(ax.lines[0].get_ydata()) == [0, 1]
        assert len(ax.lines[1].get_xdata()) == reports["before"]["bins"]
        assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1)
        assert ax.get_xlabel() == "mean predicted P(positive)"
        assert ax.get_ylabel() == "observed fraction positive"
        legend = [text.get_text() for text in ax.get_legend().get_texts()]
        assert f"before (ECE {reports['before']['ece']:.3f})" in legend
        assert f"after (ECE {reports['after']['ece']:.3f})" in legend
        assert (tmp_path / "reliability.png").stat().st_size > 0
    finally:
        plt.close(fig)
