"""pneumo-eval: a checkpoint on a labelled split, read the way a screening test is read.

    pneumo-eval ckpt_path=RUN/checkpoints/best.ckpt data.root=DATA_ROOT [data.split=val]

Writes metrics.json, confusion_matrix.png and roc.png into the run directory and logs
the pictures to TensorBoard. Figures are given at the threshold chosen on validation
during training (stored in the checkpoint) and at 0.5, and per acquisition group (the
file-naming families of Kermany's archive) at the stored threshold.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from pneumo.errors import exit_on_user_error
from pneumo.model.evaluation import evaluate


def print_table(metrics: dict[str, Any]) -> None:
    """Short console summary at both thresholds."""
    table = Table(title=f"{metrics['split']}: {metrics['n']} images, AUROC {metrics['auroc']:.4f}")
    table.add_column("threshold")
    for key in ("acc", "sensitivity", "specificity", "f1"):
        table.add_column(key, justify="right")
    # the stored threshold is the operating point; 0.5 is shown for comparison only
    for name, row in (
        (f"{metrics['threshold']:.3f} (stored)", metrics),
        ("0.5 (exploratory)", metrics["at_0.5"]),
    ):
        table.add_row(name, *(f"{row[k]:.4f}" for k in ("acc", "sensitivity", "specificity", "f1")))
    Console().print(table)
    for method, cuts in metrics["threshold_spread"].items():
        Console().print(
            f"threshold by {method} on resampled films: {cuts['p05']:.3f} to {cuts['p95']:.3f} "
            f"(5th to 95th percentile, median {cuts['p50']:.3f})",
            highlight=False,
        )
    calibration = metrics["calibration"]
    before, after = calibration["before"], calibration["after"]
    Console().print(
        f"calibration (temperature {calibration['temperature']:.3f}): ECE {before['ece']:.4f} -> "
        f"{after['ece']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f}, slope "
        f"{before['calibration_slope']:.2f} -> {after['calibration_slope']:.2f} (network -> served)",
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


@hydra.main(version_base="1.3", config_path="pkg://pneumo.conf", config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    """Evaluate; return the AUROC."""
    metrics = evaluate(
        cfg.ckpt_path, cfg.data.root, cfg.data.split, Path(cfg.paths.output_dir), cfg.data.batch_size, cfg.tta
    )
    print_table(metrics)
    return metrics["auroc"]


if __name__ == "__main__":
    main()
