"""The classification figures: one definition for training's logs and for pneumo-eval.

Probabilities are of the positive class; labels are decided by ``threshold.is_positive``
(never by torchmetrics' own ``p > threshold``), and every ratio comes from ``ratios``, so
training, pneumo-eval and the tests count a film the same way. A ratio with nothing to
count (no positive film, say) is NaN, not 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torchmetrics
from torchmetrics.classification import BinaryAUROC

from pneumo.model.threshold import is_positive

# The figures training logs per epoch (``*/at_0.5/*``, ``val/at_threshold/*``). ``ratios`` also
# gives NPV, which pneumo-eval reports; it is left out here so that training logs keep their tags.
FIGURES = ("acc", "sensitivity", "specificity", "precision", "f1")


def ratios(tp: float, fp: float, tn: float, fn: float) -> dict[str, float]:
    """Accuracy, sensitivity (recall of the positive class), specificity, precision (positive
    predictive value), NPV (negative predictive value: the share of films called negative that
    are) and F1."""

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {
        "acc": ratio(tp + tn, tp + tn + fp + fn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def confusion_counts(probs: torch.Tensor, targets: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[tp, fp, tn, fn]`` of the labels ``is_positive`` gives at ``threshold``."""
    predicted = is_positive(probs, threshold).to(targets.device)
    truth = targets.bool()
    tp, fp = (predicted & truth).sum(), (predicted & ~truth).sum()
    tn, fn = (~predicted & ~truth).sum(), (~predicted & truth).sum()
    return torch.stack([tp, fp, tn, fn])


class ThresholdFigure(torchmetrics.Metric):
    """One of ``FIGURES`` at a fixed threshold, accumulated over batches (and summed across ranks)."""

    full_state_update = False

    def __init__(self, figure: str, threshold: float = 0.5) -> None:
        super().__init__()
        if figure not in FIGURES:
            raise ValueError(f"figure must be one of {FIGURES}, got {figure!r}")
        self.figure = figure
        self.threshold = threshold
        self.add_state("counts", default=torch.zeros(4, dtype=torch.long), dist_reduce_fx="sum")
        self.counts: torch.Tensor  # add_state made it an attribute

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        self.counts += confusion_counts(probs, targets, self.threshold)

    def compute(self) -> torch.Tensor:
        return torch.tensor(ratios(*self.counts.tolist())[self.figure])


def classification_metrics(threshold: float = 0.5) -> torchmetrics.MetricCollection:
    """AUROC on the probabilities (``auroc``) and every one of ``FIGURES`` at ``threshold``."""
    members: dict[str, torchmetrics.Metric | torchmetrics.MetricCollection] = {"auroc": BinaryAUROC()}
    members.update({name: ThresholdFigure(name, threshold) for name in FIGURES})
    return torchmetrics.MetricCollection(members)


def logged_name(stage: str, key: str, threshold: float = 0.5) -> str:
    """The logged name of a ``classification_metrics`` member: ``val/auroc``, and figures with
    their threshold (``val/at_0.5/acc``), so that no reader takes one for the figure at the
    threshold a run ships (``val/at_threshold/acc``)."""
    return f"{stage}/{key}" if key == "auroc" else f"{stage}/at_{threshold:g}/{key}"


def metrics_at(probs: torch.Tensor, targets: torch.Tensor, threshold: float) -> dict[str, Any]:
    """Every figure at ``threshold``, with the confusion matrix (rows truth, columns prediction)."""
    tp, fp, tn, fn = confusion_counts(probs, targets, threshold).tolist()
    return {"threshold": threshold, **ratios(tp, fp, tn, fn), "confusion_matrix": [[tn, fp], [fn, tp]]}


def film_counts(targets: torch.Tensor) -> dict[str, int]:
    """How many films in all, of the other class and of the positive class."""
    return {
        "n": int(targets.numel()),
        "n_negative": int((targets == 0).sum()),
        "n_positive": int((targets == 1).sum()),
    }


def auroc(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """AUROC of the probabilities; NaN unless both classes are present."""
    return float(BinaryAUROC()(probs, targets.long())) if targets.unique().numel() == 2 else float("nan")


def evaluation_metrics(probs: torch.Tensor, targets: torch.Tensor, threshold: float) -> dict[str, Any]:
    """The figures of metrics.json: counts (positive class and the other), AUROC, and everything
    at ``threshold`` and at 0.5."""
    return {
        **film_counts(targets),
        "auroc": auroc(probs, targets),
        **metrics_at(probs, targets, threshold),
        "at_0.5": metrics_at(probs, targets, 0.5),
    }


def group_metrics(
    probs: torch.Tensor, targets: torch.Tensor, groups: Sequence[str | None], threshold: float
) -> dict[str, dict[str, Any]]:
    """Per group (films whose group is None belong to none): counts, and at ``threshold``
    specificity with its false positives, sensitivity with its misses, and AUROC.

    A group usually holds one class only (Kermany's naming families do), so the figures of
    the missing class are NaN, as ``ratios`` gives them, and AUROC too.
    """
    figures: dict[str, dict[str, Any]] = {}
    for group in sorted({g for g in groups if g is not None}):
        members = torch.tensor([g == group for g in groups])
        p, t = probs[members], targets[members]
        tp, fp, tn, fn = confusion_counts(p, t, threshold).tolist()
        rates = ratios(tp, fp, tn, fn)
        figures[group] = {
            **film_counts(t),
            "specificity": rates["specificity"],
            "false_positives": fp,
            "sensitivity": rates["sensitivity"],
            "false_negatives": fn,
            "auroc": auroc(p, t),
        }
    return figures
