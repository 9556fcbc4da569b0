import pytest
import torch

from pneumo.threshold import choose_threshold

# Ten validation cases: five NORMAL (0) and five PNEUMONIA (1), ranked by P(pneumonia).
PROBS = torch.tensor([0.05, 0.10, 0.20, 0.30, 0.60, 0.40, 0.55, 0.70, 0.80, 0.90])
TARGETS = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])


def test_youden_picks_the_cut_with_best_sensitivity_plus_specificity():
    # >= 0.70: sens 0.6, spec 1.0 (J 0.6); >= 0.40: sens 1.0, spec 0.8 (J 0.8, the best)
    assert choose_threshold(PROBS, TARGETS, "youden") == pytest.approx(0.40)


def test_sensitivity_target_takes_the_highest_cut_that_reaches_it():
    # sensitivity 0.8 first reached at >= 0.55 (4 of 5 pneumonia cases)
    assert choose_threshold(PROBS, TARGETS, "sensitivity", 0.8) == pytest.approx(0.55)
    assert choose_threshold(PROBS, TARGETS, "sensitivity", 1.0) == pytest.approx(0.40)


def test_fixed_and_one_class_fall_back_to_one_half():
    assert choose_threshold(PROBS, TARGETS, "fixed") == 0.5
    assert choose_threshold(PROBS[:5], TARGETS[:5], "youden") == 0.5


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="youden"):
        choose_threshold(PROBS, TARGETS, "magic")
