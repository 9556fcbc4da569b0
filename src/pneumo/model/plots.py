"""The pictures of an evaluation: confusion matrix and ROC curve."""

from __future__ import annotations

from typing import Any

import matplotlib
import torch
from torchmetrics.functional.classification import binary_roc

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402


def plot_confusion(cm: list[list[int]], classes: list[str], threshold: float) -> plt.Figure:
    """Confusion matrix figure: rows truth, columns prediction."""
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(cm, cmap="Blues")
    for i, row in enumerate(cm):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=14)
    ax.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xticklabels=classes,
        yticklabels=classes,
        xlabel="predicted",
        ylabel="truth",
        title=f"threshold {threshold:.3f}",
    )
    fig.tight_layout()
    return fig


def plot_roc(probs: torch.Tensor, targets: torch.Tensor, metrics: dict[str, Any]) -> plt.Figure:
    """ROC curve with the operating point marked."""
    fpr, tpr, _ = binary_roc(probs, targets.long())
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr.numpy(), tpr.numpy(), label=f"AUROC {metrics['auroc']:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.plot(
        1 - metrics["specificity"], metrics["sensitivity"], "o", label=f"threshold {metrics['threshold']:.3f}"
    )
    ax.set(xlabel="1 - specificity", ylabel="sensitivity (positive class)", title="ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
