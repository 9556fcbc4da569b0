"""pneumo-eval: a checkpoint on a labelled split, read the way a screening test is read.

    pneumo-eval ckpt_path=RUN/checkpoints/best.ckpt data.root=DATA_ROOT [data.split=val]

Writes metrics.json, confusion_matrix.png and roc.png into the run directory and logs
the pictures to TensorBoard. Figures are given at the threshold chosen on validation
during training (stored in the checkpoint) and at 0.5.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import matplotlib
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torchmetrics.functional import classification as F

from pneumo.checkpoint import LoadedModel, load_model
from pneumo.data.datamodule import XrayDataModule
from pneumo.data.dataset import Sample, scan_split
from pneumo.errors import PneumoError, exit_on_user_error
from pneumo.predict import predict
from pneumo.provenance import recorded_validation
from pneumo.threshold import is_positive

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)


def split_samples(model: LoadedModel, root: Path, split: str) -> list[Sample]:
    """The labelled images of ``split``; ``val`` is exactly the files the run validated on.

    Checkpoints record their validation files; for older ones without that list, the split
    is rebuilt from the training settings.
    """
    if split == "val":
        recorded = recorded_validation(model.meta, root, model.path)
        if recorded is not None:
            return recorded
        data_cfg = model.meta.get("config", {}).get("data", {})
        keys = ("val_fraction", "val_holdout", "min_val_images", "seed")
        datamodule = XrayDataModule(
            str(root), model.classes, **{k: data_cfg[k] for k in keys if k in data_cfg}
        )
        return datamodule.split_samples()[1]
    if not (root / split).is_dir():
        raise PneumoError(f"split folder not found: {root / split} (data.root, data.split)")
    return scan_split(root / split, model.classes)


def binary_metrics(probs: torch.Tensor, targets: torch.Tensor, threshold: float) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, F1 and confusion matrix at ``threshold``."""
    # labels, not probabilities: torchmetrics would apply its own rule (p > threshold)
    cm = F.binary_confusion_matrix(is_positive(probs, threshold).long(), targets.long())
    (tn, fp), (fn, tp) = cm.tolist()

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "threshold": threshold,
        "acc": ratio(tp + tn, tp + tn + fp + fn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "confusion_matrix": cm.tolist(),
    }


def evaluate_probs(probs: torch.Tensor, targets: torch.Tensor, threshold: float) -> dict[str, Any]:
    """All figures of metrics.json for predictions ``probs`` of PNEUMONIA on ``targets``."""
    both = targets.unique().numel() == 2
    return {
        "n": int(targets.numel()),
        "n_normal": int((targets == 0).sum()),
        "n_pneumonia": int((targets == 1).sum()),
        "auroc": float(F.binary_auroc(probs, targets)) if both else float("nan"),
        **binary_metrics(probs, targets, threshold),
        "at_0.5": binary_metrics(probs, targets, 0.5),
    }


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
    fpr, tpr, _ = F.binary_roc(probs, targets)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr.numpy(), tpr.numpy(), label=f"AUROC {metrics['auroc']:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.plot(
        1 - metrics["specificity"], metrics["sensitivity"], "o", label=f"threshold {metrics['threshold']:.3f}"
    )
    ax.set(xlabel="1 - specificity", ylabel="sensitivity (pneumonia)", title="ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def print_table(metrics: dict[str, Any]) -> None:
    """Short console summary at both thresholds."""
    table = Table(title=f"{metrics['split']}: {metrics['n']} images, AUROC {metrics['auroc']:.4f}")
    table.add_column("threshold")
    for key in ("acc", "sensitivity", "specificity", "f1"):
        table.add_column(key, justify="right")
    for row in (metrics, metrics["at_0.5"]):
        table.add_row(
            f"{row['threshold']:.3f}", *(f"{row[k]:.4f}" for k in ("acc", "sensitivity", "specificity", "f1"))
        )
    Console().print(table)


def evaluate(
    ckpt_path: str, root: str, split: str, output_dir: Path, batch_size: int = 32, tta: bool = False
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split and write metrics.json and the pictures."""
    model = load_model(ckpt_path)
    samples = split_samples(model, Path(root), split)
    rows = predict(model, [s.path for s in samples], batch_size, progress=len(samples) > batch_size, tta=tta)
    failed = [r for r in rows if r.error]
    for row in failed:
        log.warning("left out %s: %s", row.path, row.error)
    label_of = {str(s.path): s.label for s in samples}
    kept = [r for r in rows if not r.error]
    probs = torch.tensor([r.p_pneumonia for r in kept])
    targets = torch.tensor([label_of[r.path] for r in kept])
    metrics = {
        **evaluate_probs(probs, targets, model.threshold),
        "checkpoint": str(Path(ckpt_path).resolve()),
        "data_root": str(Path(root).resolve()),
        "split": split,
        "tta": tta,
        "classes": model.classes,
        "unreadable_files": [r.path for r in failed],
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    figures = {
        "confusion_matrix": plot_confusion(metrics["confusion_matrix"], model.classes, model.threshold),
        "roc": plot_roc(probs, targets, metrics),
    }
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(output_dir / "tensorboard")) as writer:
        for name, fig in figures.items():
            fig.savefig(output_dir / f"{name}.png", dpi=120)
            writer.add_figure(f"eval/{name}", fig)  # closes the figure
    print_table(metrics)
    log.info("metrics, confusion_matrix.png and roc.png in %s", output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://pneumo.conf", config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    """Evaluate; return the AUROC."""
    metrics = evaluate(
        cfg.ckpt_path, cfg.data.root, cfg.data.split, Path(cfg.paths.output_dir), cfg.data.batch_size, cfg.tta
    )
    return metrics["auroc"]


if __name__ == "__main__":
    main()
