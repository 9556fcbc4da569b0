"""pneumo-eval: a checkpoint on a labelled split, read the way a screening test is read.

    pneumo-eval ckpt_path=RUN/checkpoints/best.ckpt data.root=DATA_ROOT [data.split=val]

Writes metrics.json, confusion_matrix.png and roc.png into the run directory and logs
the pictures to TensorBoard. Figures are given at the threshold chosen on validation
during training (stored in the checkpoint) and at 0.5, and per acquisition group (the
file-naming families of Kermany's archive) at the stored threshold.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from pneumo.checkpoint import LoadedModel, load_model
from pneumo.data.dataset import Sample, scan_split
from pneumo.data.split import acquisition_group
from pneumo.errors import PneumoError, exit_on_user_error, printable
from pneumo.inference import label_for, predict
from pneumo.metrics import evaluation_metrics, group_metrics
from pneumo.output import write_text_atomically
from pneumo.plots import plot_confusion, plot_roc
from pneumo.provenance import validation_samples
from pneumo.threshold import threshold_spread

log = logging.getLogger(__name__)


def split_samples(model: LoadedModel, root: Path, split: str) -> list[Sample]:
    """The labelled images of ``split``; ``val`` is exactly the files the run validated on."""
    if split == "val":
        return validation_samples(model.meta, root, model.path)
    if not (root / split).is_dir():
        raise PneumoError(f"split folder not found: {root / split} (data.root, data.split)")
    return scan_split(root / split, model.classes)


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
    for method, cuts in metrics["threshold_spread"].items():
        Console().print(
            f"threshold by {method} on resampled films: {cuts['p05']:.3f} to {cuts['p95']:.3f} "
            f"(5th to 95th percentile, median {cuts['p50']:.3f})",
            highlight=False,
        )
    if metrics["groups"]:
        print_groups(metrics["groups"], metrics["threshold"])


def print_groups(groups: dict[str, dict[str, Any]], threshold: float) -> None:
    """One row per acquisition group at the stored threshold; a figure with nothing to count is '-'."""

    def shown(value: float, count: int) -> str:
        return "-" if math.isnan(value) else f"{value:.4f} ({count})"

    table = Table(title=f"by acquisition group, at threshold {threshold:.3f}")
    table.add_column("group")
    for name in ("films", "neg/pos", "specificity\n(FP)", "sensitivity\n(missed)", "AUROC"):
        table.add_column(name, justify="right")
    for group, row in groups.items():
        table.add_row(
            group,
            str(row["n"]),
            f"{row['n_negative']} / {row['n_positive']}",
            shown(row["specificity"], row["false_positives"]),
            shown(row["sensitivity"], row["false_negatives"]),
            "-" if math.isnan(row["auroc"]) else f"{row['auroc']:.4f}",
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
        log.warning("left out %s: %s", printable(row.path), row.error)
    # 1 for the positive class, whatever its place in data.classes
    label_of = {str(s.path): int(s.label == model.positive_index) for s in samples}
    kept = [r for r in rows if not r.error]
    probs = torch.tensor([r.p_pneumonia for r in kept])
    targets = torch.tensor([label_of[r.path] for r in kept])
    target = float(model.meta.config.get("model", {}).get("target_sensitivity", 0.95))
    metrics = {
        **evaluation_metrics(probs, targets, model.threshold),
        # where each threshold rule would land on resampled films: its reliability
        "threshold_spread": threshold_spread(probs, targets, target) if targets.unique().numel() == 2 else {},
        # per file-naming family: a source or era the pooled figures can hide
        "groups": group_metrics(probs, targets, [acquisition_group(r.path) for r in kept], model.threshold),
        "checkpoint": str(Path(ckpt_path).resolve()),
        "data_root": str(Path(root).resolve()),
        "split": split,
        "tta": tta,
        "classes": model.classes,
        "positive_class": model.meta.positive_class,
        # rows truth, columns prediction, both in this order
        "confusion_matrix_labels": [label_for(model, False), label_for(model, True)],
        "unreadable_files": [r.path for r in failed],
    }
    write_text_atomically(output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    figures = {
        "confusion_matrix": plot_confusion(
            metrics["confusion_matrix"], [label_for(model, False), label_for(model, True)], model.threshold
        ),
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
