"""Applying a trained model to image files: the library behind pneumo-predict, pneumo-eval,
pneumo-export's check and Grad-CAM.

Files are decoded by ``preprocess.load_image`` and normalised by ``preprocess.to_model_input``,
the functions training uses, and the network's output is read by
``network.positive_probability``, as in training's validation step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import track

from pneumo.data.preprocess import BadImageError, load_image, to_model_input, to_unit
from pneumo.data.transforms import TTA_VIEWS, tta_views
from pneumo.errors import printable
from pneumo.model.network import positive_probability
from pneumo.model.threshold import is_positive
from pneumo.serving.loading import LoadedModel


@dataclass
class Prediction:
    """One row of output: a file and what the model made of it (or why it could not)."""

    path: str
    label: str = ""
    # P(positive class), exact and unrounded: pneumo-eval counts from it
    p_positive: float | None = None
    threshold: float | None = None
    error: str = ""
    # the class p_positive is the probability of (data.positive_class)
    positive_class: str = ""

    def as_row(self) -> dict[str, Any]:
        """The row pneumo-predict writes: every field, plus ``p_pneumonia`` (the column name
        of earlier versions) where the positive class is PNEUMONIA, so it never names another."""
        row = asdict(self)
        if self.positive_class == "PNEUMONIA":
            row["p_pneumonia"] = self.p_positive
        return row


def label_for(model: LoadedModel, positive: bool) -> str:
    """The class name of a decision: the positive class, or the other one."""
    return model.classes[model.positive_index if positive else 1 - model.positive_index]


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def probabilities(model: LoadedModel, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Calibrated P(positive class) for a ``N x 1 x H x W`` uint8 batch; with ``tta``, the mean
    over ``TTA_VIEWS`` of each view's calibrated probability."""
    x = to_unit(images)
    if tta:
        x = tta_views(x)
    with torch.inference_mode():
        logits = model.served_net(to_model_input(x, model.mean, model.std))
    probs = positive_probability(logits, model.positive_index, model.meta.temperature)
    return probs.view(len(TTA_VIEWS), -1).mean(dim=0) if tta else probs


def predict(
    model: LoadedModel,
    files: Sequence[Path],
    batch_size: int = 16,
    threshold: float | None = None,
    progress: bool = False,
    tta: bool = False,
) -> list[Prediction]:
    """Classify ``files``; unreadable ones get a row with the reason instead of a label.

    ``tta`` averages P(positive class) over fixed zooms, rotations and shifts (``TTA_VIEWS``),
    at six times the cost.
    """
    cut = model.threshold if threshold is None else threshold
    rows: list[Prediction] = []
    chunks: Iterable[Sequence[Path]] = _batches(files, batch_size)
    if progress:
        chunks = track(list(chunks), description="predicting", transient=True, console=Console(stderr=True))
    for chunk in chunks:
        images, good = [], []
        for path in chunk:
            try:
                images.append(load_image(path, model.image_size))
                good.append(path)
            except BadImageError as err:
                reason = str(err).removeprefix(printable(f"{path}: "))
                rows.append(Prediction(str(path), error=reason, positive_class=model.meta.positive_class))
        if not images:
            continue
        probs = probabilities(model, torch.stack(images), tta)
        for path, p, positive in zip(good, probs.tolist(), is_positive(probs, cut).tolist()):
            label = label_for(model, positive)
            rows.append(Prediction(str(path), label, p, cut, positive_class=model.meta.positive_class))
    order = {str(p): i for i, p in enumerate(files)}
    return sorted(rows, key=lambda r: order[r.path])
