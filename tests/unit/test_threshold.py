import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from pneumo.data.datamodule import XrayDataModule
from pneumo.data.dataset import list_films
from pneumo.data.preprocess import load_image
from pneumo.evaluation.report import evaluate
from pneumo.model.module import XrayClassifier
from pneumo.model.network import resnet18_classifier
from pneumo.model.threshold import (
    CUT_OFF_MARGIN,
    POSITIVE_IF,
    choose_threshold,
    is_positive,
    threshold_spread,
)
from pneumo.serving.export import export
from pneumo.serving.inference import predict, probabilities
from pneumo.serving.loading import load_model

# Ten validation cases: five NORMAL (0) and five PNEUMONIA (1), ranked by P(pneumonia).
PROBS = torch.tensor([0.05, 0.10, 0.20, 0.30, 0.60, 0.40, 0.55, 0.70, 0.80, 0.90])
TARGETS = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])


def test_youden_picks_the_cut_with_best_sensitivity_plus_specificity():
    # >= 0.70: sens 0.6, spec 1.0 (J 0.6); >= 0.40: sens 1.0, spec 0.8 (J 0.8, the best);
    # stored just below that film, so that it keeps its side under other arithmetic
    assert choose_threshold(PROBS, TARGETS, "youden") == pytest.approx(0.40 - CUT_OFF_MARGIN)


def test_sensitivity_target_takes_the_highest_cut_that_reaches_it():
    # sensitivity 0.8 first reached at >= 0.55 (4 of 5 pneumonia cases)
    assert choose_threshold(PROBS, TARGETS, "sensitivity", 0.8) == pytest.approx(0.55 - CUT_OFF_MARGIN)
    assert choose_threshold(PROBS, TARGETS, "sensitivity", 1.0) == pytest.approx(0.40 - CUT_OFF_MARGIN)
    # the lowest film as the cut-off: nothing below it, still the margin
    lowest = choose_threshold(torch.tensor([0.1, 0.9]), torch.tensor([1, 0]), "sensitivity", 1.0)
    assert lowest == pytest.approx(0.1 - CUT_OFF_MARGIN)


def test_the_stored_threshold_keeps_every_validation_film_on_its_side_with_a_margin():
    generator = torch.Generator().manual_seed(0)
    # neighbouring float32 probabilities, ties, and a spread of others
    probs = torch.cat(
        [torch.tensor([0.3, 0.3 + 2**-25, 0.3 + 2**-25, 0.5, 0.5]), torch.rand(200, generator=generator)]
    )
    targets = torch.cat([torch.tensor([0, 1, 1, 0, 1]), (torch.rand(200, generator=generator) > 0.4).long()])
    positives = sorted(probs[targets == 1].tolist(), reverse=True)
    for target in (0.5, 0.9, 0.97, 1.0):
        threshold = choose_threshold(probs, targets, "sensitivity", target)
        # the rule's cut-off found by hand: the k-th highest P(pneumonia) of the pneumonia films
        cut = positives[math.ceil(target * len(positives)) - 1]
        # exactly the films at or above the cut-off are positive, with the margin to spare
        assert torch.equal(is_positive(probs, threshold), probs >= cut)
        lower = probs[probs < cut]
        gap = (cut - float(lower.max())) / 2 if lower.numel() else cut
        assert cut - threshold == pytest.approx(min(CUT_OFF_MARGIN, gap))
    # just below the film it was chosen at, not halfway down to the next film
    chosen = choose_threshold(torch.tensor([0.1, 0.6]), torch.tensor([0, 1]))
    assert bool(is_positive(torch.tensor([0.6 - 5e-5]), chosen))  # batch size, ONNX drift
    assert not bool(is_positive(torch.tensor([0.6 - 2e-4]), chosen))


def test_fixed_and_one_class_fall_back_to_one_half():
    assert choose_threshold(PROBS, TARGETS, "fixed") == 0.5
    assert choose_threshold(PROBS[:5], TARGETS[:5], "youden") == 0.5


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="youden"):
        choose_threshold(PROBS, TARGETS, "magic")


# -- one rule at the threshold: P(pneumonia) >= threshold, everywhere ----------------------


def _tie_checkpoint(trained_ckpt: Path, out: Path) -> Path:
    """A real checkpoint whose head is zeroed: equal logits, so P(pneumonia) is exactly 0.5
    for every film, and its threshold is 0.5: every film sits on the threshold."""
    checkpoint = torch.load(trained_ckpt, weights_only=True)
    for key in ("net.fc.weight", "net.fc.bias"):
        checkpoint["state_dict"][key].zero_()
    checkpoint["pneumo"]["threshold"] = 0.5
    torch.save(checkpoint, out)
    return out


def test_is_positive_counts_the_threshold_itself_in_double_precision():
    assert is_positive(torch.tensor([0.25, 0.5, 0.75]), 0.5).tolist() == [False, True, True]
    # float32(0.3) lies above 0.3: still positive at 0.3 exactly as typed
    assert bool(is_positive(torch.tensor(0.3, dtype=torch.float32), 0.3))
    assert not bool(is_positive(torch.tensor(0.3, dtype=torch.float32), 0.30000002))


def test_films_on_the_threshold_are_pneumonia_for_predict_eval_export_and_training(
    tmp_path, trained_ckpt, tiny_root
):
    ckpt = _tie_checkpoint(trained_ckpt, tmp_path / "tie.ckpt")
    model = load_model(ckpt)
    rows = predict(model, list_films([tiny_root / "test"]).files)
    assert {r.p_positive for r in rows} == {0.5} and {r.label for r in rows} == {"PNEUMONIA"}

    metrics = evaluate(str(ckpt), str(tiny_root), "test", tmp_path / "eval")
    assert metrics["confusion_matrix"] == [[0, 8], [0, 8]] and metrics["sensitivity"] == 1.0
    assert metrics["at_0.5"]["confusion_matrix"] == [[0, 8], [0, 8]]

    export(ckpt, "torchscript", tmp_path / "exported")
    spec = json.loads((tmp_path / "exported" / "preprocessing.json").read_text())
    assert spec["positive_if"] == "p >= threshold" == POSITIVE_IF and spec["threshold"] == 0.5

    # the model's own validation figures, logged at 0.5 by a real Trainer
    classifier = XrayClassifier(resnet18_classifier())
    with torch.no_grad():
        classifier.net.fc.weight.zero_()
        classifier.net.fc.bias.zero_()
    datamodule = XrayDataModule(str(tiny_root), image_size=32, batch_size=4, val_fraction=0.25)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(classifier, datamodule=datamodule, verbose=False)[0]
    assert logged["val/at_0.5/sensitivity"] == 1.0 and logged["val/at_0.5/specificity"] == 0.0


def test_eval_counts_a_film_at_the_threshold_as_predict_labels_it(tmp_path, trained_ckpt, tiny_root):
    model = load_model(trained_ckpt)
    files = list_films([tiny_root / "test"]).files
    exact = probabilities(model, torch.stack([load_image(f, model.image_size) for f in files])).tolist()
    # a film whose probability printed to 6 places reads lower than it is
    on_threshold = next(p for p in exact if round(p, 6) < p)
    checkpoint = torch.load(trained_ckpt, weights_only=True)
    checkpoint["pneumo"]["threshold"] = on_threshold
    torch.save(checkpoint, tmp_path / "at.ckpt")
    rows = predict(load_model(tmp_path / "at.ckpt"), files)
    truth = {str(f): int(f.parent.name == "PNEUMONIA") for f in files}
    expected = [[0, 0], [0, 0]]
    for row in rows:
        expected[truth[row.path]][int(row.label == "PNEUMONIA")] += 1
    metrics = evaluate(str(tmp_path / "at.ckpt"), str(tiny_root), "test", tmp_path / "eval")
    assert metrics["confusion_matrix"] == expected


def test_threshold_spread_brackets_the_threshold_of_the_full_split():
    generator = torch.Generator().manual_seed(0)
    targets = torch.cat([torch.zeros(60), torch.ones(140)]).long()
    probs = (torch.randn(200, generator=generator) * 0.2 + 0.35 + 0.3 * targets).clamp(0, 1)
    spread = threshold_spread(probs, targets, target_sensitivity=0.9, resamples=100)
    assert set(spread) == {"youden", "sensitivity", "plateau"}
    for method, cuts in spread.items():
        full = choose_threshold(probs, targets, method, 0.9)
        assert cuts["p05"] <= full <= cuts["p95"] and cuts["p05"] < cuts["p95"]
    assert spread == threshold_spread(probs, targets, target_sensitivity=0.9, resamples=100)  # seeded


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_plateau_takes_the_middle_of_the_cut_offs_validation_cannot_tell_apart():
    # sensitivity 0.6 first reached at >= 0.70, with specificity 1.0; the next cut-off (>= 0.60)
    # calls a normal film: only (0.60, 0.70] gives the same figures, and its middle is taken
    assert choose_threshold(PROBS, TARGETS, "plateau", 0.6) == pytest.approx(
        _sigmoid((_logit(0.70) + _logit(0.60)) / 2)
    )
    # sensitivity 0.8 first reached at >= 0.55 (specificity 0.8); >= 0.40 keeps both: (0.30, 0.55]
    cut = choose_threshold(PROBS, TARGETS, "plateau", 0.8)
    assert cut == pytest.approx(_sigmoid((_logit(0.55) + _logit(0.30)) / 2))
    # strictly between two films, so no film sits on it under other arithmetic
    assert not any(math.isclose(cut, p, abs_tol=1e-6) for p in PROBS.tolist())
    # a tolerance of one normal film in five joins (0.30, 0.70] at target 0.6
    wide = choose_threshold(PROBS, TARGETS, "plateau", 0.6, tolerance=0.25)
    assert wide == pytest.approx(_sigmoid((_logit(0.70) + _logit(0.30)) / 2))


def test_plateau_keeps_the_target_sensitivity_and_lies_below_the_edge():
    for target in (0.6, 0.8, 1.0):
        cut = choose_threshold(PROBS, TARGETS, "plateau", target, tolerance=0.5)
        assert is_positive(PROBS[TARGETS == 1], cut).float().mean() >= target
        assert cut <= choose_threshold(PROBS, TARGETS, "sensitivity", target) + CUT_OFF_MARGIN


def test_plateau_reaching_the_lowest_film_stays_below_it():
    # 10 pneumonia films, one at p = 1e-7 below every normal film: a 0.95 sensitivity needs all
    # 10 (9 / 10 = 0.90), so the plateau is the one cut-off at the lowest film, p >= 1e-7. It
    # ends at max(1e-7 - 1e-4, 1e-7 / 10) = 1e-8 below; its middle on the logit scale is
    # about sqrt(1e-7 * 1e-8) = 3.16e-8, under the film (the floor of 1e-6 used before put the
    # middle at sqrt(1e-7 * 1e-6) = 3.2e-7, above it: sensitivity 0.90)
    targets = torch.tensor([0] * 5 + [1] * 10)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 1e-7, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    cut = choose_threshold(probs, targets, "plateau", 0.95)
    film = float(torch.tensor(1e-7))  # the film's probability as float32 holds it
    assert cut == pytest.approx(_sigmoid((_logit(film) + _logit(film / 10)) / 2), rel=1e-9)
    assert cut == pytest.approx(3.162e-8, rel=1e-3) and cut < film
    assert is_positive(probs[targets == 1], cut).float().mean() == 1.0  # 10 / 10 >= 0.95
    # a film at p = 0 leaves only 0
    zero = choose_threshold(torch.tensor([0.2, 0.3, 0.0, 0.9]), torch.tensor([0, 0, 1, 1]), "plateau", 0.95)
    assert zero == 0.0


def test_threshold_spread_draws_patients_whole_with_the_given_seed_and_tolerance():
    # two patients of five identical films each (one normal at 0.3, one pneumonia at 0.7) and a
    # third pneumonia patient at 0.6: a patient draw repeats a patient's five films together, so
    # every threshold read off a draw holding both classes lies between the normal film (0.3)
    # and the highest pneumonia film (0.7)
    probs = torch.tensor([0.3] * 5 + [0.7] * 5 + [0.6])
    targets = torch.tensor([0] * 5 + [1] * 6)
    patients = ["a"] * 5 + ["b"] * 5 + ["c"]
    by_patient = threshold_spread(probs, targets, 0.95, resamples=50, seed=3, patients=patients)
    assert by_patient == threshold_spread(probs, targets, 0.95, resamples=50, seed=3, patients=patients)
    for cuts in by_patient.values():
        assert 0.3 < cuts["p05"] <= cuts["p95"] < 0.7
    # one patient holding every film: each draw is the whole set, so the spread collapses onto
    # the threshold of the full set, read with the tolerance given: at target 0.6, 0.25 joins
    # (0.30, 0.70] (see the plateau test above), 0 keeps (0.60, 0.70]
    one = ["x"] * PROBS.numel()
    for tolerance, low in ((0.25, 0.30), (0.0, 0.60)):
        spread = threshold_spread(PROBS, TARGETS, 0.6, resamples=5, patients=one, tolerance=tolerance)
        middle = _sigmoid((_logit(0.70) + _logit(low)) / 2)
        assert spread["plateau"] == pytest.approx({"p05": middle, "p50": middle, "p95": middle})
