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


def plot_decision_curve(rows: list[dict[str, float]], prevalence: float) -> plt.Figure:
    """Net benefit of the model against treat-all and treat-none over threshold probabilities
    (``statistics.decision_curve``'s rows), marked exploratory."""
    pts = [row["threshold"] for row in rows]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(pts, [row["model"] for row in rows], "o-", markersize=3, label="model")
    ax.plot(pts, [row["treat_all"] for row in rows], "--", color="grey", label="treat all")
    ax.plot(pts, [row["treat_none"] for row in rows], ":", color="black", label="treat none")
    top = max([row["model"] for row in rows] + [row["treat_all"] for row in rows] + [0.0])
    ax.set(
        xlim=(0, 1),
        ylim=(-0.05 * max(top, 0.1), max(top, 0.1) * 1.1),
        xlabel="threshold probability",
        ylabel="net benefit",
        title=f"decision curve (exploratory; prevalence {prevalence:.2f})",
    )
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig
