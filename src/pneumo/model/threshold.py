"""The operating point: choosing the threshold, and the one rule that applies it.

Every decision in pneumo (validation metrics, pneumo-eval, pneumo-predict, the exported
metadata) goes through ``is_positive``, so a film whose probability sits exactly on the
threshold gets the same label everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import binary_roc

THRESHOLD_METHODS = ("youden", "sensitivity", "plateau", "fixed")
# plateau: how much specificity the cut-offs below the edge may lose and still count as "the
# same validation figures"; 0: none of the normal films may change sides
PLATEAU_TOLERANCE = 0.0
# The rule as written into exported metadata; ``is_positive`` is its implementation.
POSITIVE_IF = "p >= threshold"
# How far below the cut-off film the stored threshold lies: well above the drift of one film's
# probability between arithmetic paths (about 1e-6: batch size, ONNX Runtime), well below
# anything that moves the operating point
CUT_OFF_MARGIN = 1e-4


def is_positive(probs: torch.Tensor | float, threshold: float) -> torch.Tensor:
    """The positive class where ``P(positive) >= threshold``, on exact (unrounded) probabilities.

    ``>=`` because the thresholds ``choose_threshold`` picks are ROC cut-offs, which count
    a prediction equal to the cut-off as positive. Compared in double precision, so a
    threshold given as a Python float (``--threshold 0.3``) is never rounded to float32 first.
    """
    probs = torch.as_tensor(probs)
    if probs.device.type != "mps":  # MPS has no float64; training uses 0.5 there, exact in float32
        probs = probs.to(torch.float64)
    return probs >= threshold


def choose_threshold(
    probs: torch.Tensor,
    targets: torch.Tensor,
    method: str = "youden",
    target_sensitivity: float = 0.95,
    tolerance: float = PLATEAU_TOLERANCE,
) -> float:
    """Pick a decision threshold on validation predictions.

    - ``youden``: maximise sensitivity + specificity - 1 (Youden's J);
    - ``sensitivity``: the highest cut-off whose sensitivity still reaches
      ``target_sensitivity``, i.e. the best specificity at that sensitivity;
    - ``plateau``: the cut-offs that reach ``target_sensitivity`` with a specificity within
      ``tolerance`` of the best the target allows form a plateau of thresholds validation
      cannot tell apart; the threshold is its middle on the logit scale (``plateau_middle``);
    - ``fixed``: 0.5.
    ``youden`` and ``sensitivity`` return a threshold ``CUT_OFF_MARGIN`` below the chosen
    cut-off (a film's probability), or halfway to the next lower probability where that is
    closer: the validation films fall on the same sides, and the film at the cut-off keeps its
    side when served with slightly different arithmetic (another batch size, an ONNX export).
    With only one class present there is no curve to read, and 0.5 is returned.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got {method!r}")
    targets = targets.long()
    if method == "fixed" or targets.unique().numel() < 2:
        return 0.5
    fpr, tpr, thresholds = binary_roc(probs.float(), targets)
    if method == "plateau":
        return plateau_middle(fpr, tpr, thresholds, target_sensitivity, tolerance)
    if method == "youden":
        # Index 0 is torchmetrics' sentinel (nothing called positive), not a real cut-off.
        best = 1 + int(torch.argmax((tpr - fpr)[1:]))
    else:
        best = _first_reaching(tpr, target_sensitivity)
    cut = float(thresholds[best])
    if best + 1 == thresholds.numel():  # the lowest film: every film is called positive
        return max(cut - CUT_OFF_MARGIN, 0.0)
    # in float64: strictly between two neighbouring float32 probabilities
    return cut - min(CUT_OFF_MARGIN, (cut - float(thresholds[best + 1])) / 2)


def _first_reaching(tpr: torch.Tensor, target_sensitivity: float) -> int:
    """The highest cut-off (ROC index) whose sensitivity reaches ``target_sensitivity``."""
    return int(torch.nonzero(tpr >= target_sensitivity - 1e-12).flatten()[0])


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def plateau_middle(
    fpr: torch.Tensor,
    tpr: torch.Tensor,
    thresholds: torch.Tensor,
    target_sensitivity: float,
    tolerance: float,
) -> float:
    """The middle, on the logit scale, of the thresholds validation cannot tell apart.

    Cut-off ``i`` (films with ``p >= thresholds[i]`` called positive) holds for every threshold
    in ``(thresholds[i + 1], thresholds[i]]``. The highest cut-off that reaches
    ``target_sensitivity`` has the best specificity the target allows; going down from it, the
    cut-offs whose specificity stays within ``tolerance`` of that best form the plateau: any
    threshold across it keeps the target and the same specificity, up to ``tolerance``. Its top
    edge (what ``sensitivity`` takes) is where the pneumonia films validation holds first fall
    below the target; its middle on the logit scale, where a probability's log-odds move evenly,
    leaves room on both sides: for films of another time or machine that score the normal films
    higher and the pneumonia films lower. The middle lies strictly between two films'
    probabilities.
    """
    specificity = 1 - fpr
    high = _first_reaching(tpr, target_sensitivity)
    low = high
    floor = float(specificity[high]) - tolerance - 1e-9  # 1e-9: float32 ratios of equal counts
    while low + 1 < specificity.numel() and float(specificity[low + 1]) >= floor:
        low += 1
    upper = float(thresholds[high])
    if low + 1 < thresholds.numel():
        lower = float(thresholds[low + 1])
    else:
        # every film positive: the plateau reaches down to 0; it is taken to end a margin below
        # the lowest film, or at a tenth of its probability where that film lies below the
        # margin (a fixed floor could lie above the film, losing it and the target)
        lowest = float(thresholds[low])
        if lowest <= 0:
            return 0.0  # a film at p = 0: no threshold above 0 calls it positive
        lower = max(lowest - CUT_OFF_MARGIN, lowest / 10)
    middle = 1.0 / (1.0 + math.exp(-(_logit(upper) + _logit(lower)) / 2))
    # never above the plateau's top edge (the logit is clipped at 1e-12 from 0 and 1)
    return min(middle, upper)


def threshold_spread(
    probs: torch.Tensor,
    targets: torch.Tensor,
    target_sensitivity: float = 0.95,
    resamples: int = 200,
    seed: int = 0,
    patients: Sequence[str] | None = None,
    tolerance: float = PLATEAU_TOLERANCE,
) -> dict[str, dict[str, float]]:
    """How far each method's threshold moves when the films given are resampled.

    Bootstrap of the films given (pneumo-eval gives the films it evaluates, not the
    validation films the stored threshold came from): ``patients`` (film ``i``'s patient id),
    when given, are drawn with replacement with all their films, as a split draws them;
    otherwise single films. ``seed`` fixes the draws; ``tolerance`` is the plateau rule's.
    The 5th, 50th and 95th percentile of the threshold ``choose_threshold`` picks, per method:
    a threshold that another draw of this size would move far is not one to trust on new
    films. Draws holding one class only have no threshold and are left out.
    """
    generator = torch.Generator().manual_seed(seed)
    films = torch.arange(targets.numel())
    if patients is None:
        film_patient = films
    else:
        _, inverse = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
        film_patient = torch.from_numpy(inverse.astype(np.int64))
    count = int(film_patient.max()) + 1
    picked: dict[str, list[float]] = {method: [] for method in THRESHOLD_METHODS if method != "fixed"}
    for _ in range(resamples):
        chosen = torch.randint(0, count, (count,), generator=generator)
        # each film as many times as its patient was drawn
        draw = torch.repeat_interleave(films, torch.bincount(chosen, minlength=count)[film_patient])
        if targets[draw].unique().numel() < 2:
            continue  # one class only: no curve, no threshold to read
        for method, values in picked.items():
            values.append(choose_threshold(probs[draw], targets[draw], method, target_sensitivity, tolerance))
    quantiles = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    spread = {}
    for method, values in picked.items():
        if not values:  # every draw held one class only
            values = [float("nan")]
        cuts = torch.quantile(torch.tensor(values, dtype=torch.float64), quantiles).tolist()
        spread[method] = dict(zip(("p05", "p50", "p95"), cuts))
    return spread
