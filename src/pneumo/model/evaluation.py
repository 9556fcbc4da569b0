"""Evaluating a checkpoint on a labelled split: metrics.json and the pictures.

Figures are given at the threshold chosen on validation during training (stored in the
checkpoint) and at 0.5, and per acquisition group (the file-naming families of Kermany's
archive) at the stored threshold.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from pneumo.artifacts.output import write_text_atomically
from pneumo.data.dataset import Sample, scan_split
from pneumo.data.provenance import validation_samples
from pneumo.data.split import acquisition_group
from pneumo.errors import PneumoError, printable
from pneumo.model.calibration import (
    apply_temperature,
    calibration_report,
    margin_from_probability,
    plot_reliability,
)
from pneumo.model.inference import label_for, predict
from pneumo.model.loading import LoadedModel, load_model
from pneumo.model.metrics import evaluation_metrics, group_metrics
from pneumo.model.plots import plot_confusion, plot_roc
from pneumo.model.threshold import threshold_spread

log = logging.getLogger(__name__)


def films_of_split(model: LoadedModel, root: Path, split: str) -> list[Sample]:
    """The labelled images of ``split``; ``val`` is exactly the files the run validated on."""
    if split == "val":
        return validation_samples(model.meta, root, model.path)
    if not (root / split).is_dir():
        raise PneumoError(f"split folder not found: {root / split} (data.root, data.split)")
    return scan_split(root / split, model.classes)


CALIBRATION_FIGURES = ("brier", "ece", "calibration_slope", "calibration_intercept")


def calibration_before_after(
    probs: torch.Tensor, targets: torch.Tensor, temperature: float
) -> dict[str, Any]:
    """How well the probabilities match the observed frequencies, as served (``after`` the
    checkpoint's temperature) and as the network gave them (``before``)."""
    margins = margin_from_probability(probs.double())
    assert isinstance(margins, torch.Tensor)  # a tensor in, a tensor out
    raw = apply_temperature(margins * temperature, 1.0)
    return {
        "method": "temperature scaling, fitted on the validation films during training",
        "temperature": temperature,
        "before": calibration_report(raw, targets),
        "after": calibration_report(probs.double(), targets),
    }


def evaluate(
    ckpt_path: str, root: str, split: str, output_dir: Path, batch_size: int = 32, tta: bool = False
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split and write metrics.json and the pictures."""
    model = load_model(ckpt_path)
    samples = films_of_split(model, Path(root), split)
    rows = predict(model, [s.path for s in samples], batch_size, progress=len(samples) > batch_size, tta=tta)
    failed = [r for r in rows if r.error]
    for row in failed:
        log.warning("left out %s: %s", printable(row.path), row.error)
    # 1 for the positive class, whatever its place in data.classes
    label_of = {str(s.path): int(s.label == model.positive_index) for s in samples}
    kept = [r for r in rows if not r.error]
    probs = torch.tensor([r.p_positive for r in kept])
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
        "calibration": calibration_before_after(probs, targets, model.meta.temperature),
    }
    write_text_atomically(output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    figures = {
        "confusion_matrix": plot_confusion(
            metrics["confusion_matrix"], [label_for(model, False), label_for(model, True)], model.threshold
        ),
        "roc": plot_roc(probs, targets, metrics),
        "reliability": plot_reliability({name: metrics["calibration"][name] for name in ("before", "after")}),
    }
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(output_dir / "tensorboard")) as writer:
        for name, fig in figures.items():
            fig.savefig(output_dir / f"{name}.png", dpi=120)
            writer.add_figure(f"eval/{name}", fig)  # closes the figure
        for when in ("before", "after"):
            for figure in CALIBRATION_FIGURES:
                writer.add_scalar(f"eval/calibration_{when}/{figure}", metrics["calibration"][when][figure])
    log.info("metrics, confusion_matrix.png, roc.png and reliability.png in %s", output_dir)
    return metrics
