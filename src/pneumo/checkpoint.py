"""Reading a pneumo checkpoint safely and rebuilding the classifier from it alone."""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from pneumo.data.preprocess import preprocessing_spec
from pneumo.errors import PneumoError
from pneumo.model import build_resnet18
from pneumo.threshold import POSITIVE_IF


@dataclass
class LoadedModel:
    """A ready-to-run network (eval mode) with what a user needs to apply it."""

    net: nn.Module
    classes: list[str]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    threshold: float
    path: Path
    meta: dict[str, Any]

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Every step from file to input tensor, as pneumo applies it, plus the decision rule.

        Described by the current code (``preprocessing_spec``), which is what prediction
        applies to any checkpoint, with the checkpoint's own size and normalisation.
        """
        return {
            **preprocessing_spec(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "threshold": self.threshold,
            "positive_if": POSITIVE_IF,
        }


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``; explain every way the file can be wrong."""
    path = Path(path)
    if not path.is_file():
        raise PneumoError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # damaged bytes, not a forbidden object
            raise PneumoError(f"{path} is not a readable PyTorch checkpoint (corrupt: {err})") from err
        raise PneumoError(
            f"{path} holds pickled Python objects that pneumo refuses to load (unpickling them "
            "could run arbitrary code); pneumo checkpoints contain only plain data. Use a "
            "checkpoint written by pneumo-train, or re-save this one's state_dict alone"
        ) from err
    except Exception as err:
        raise PneumoError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(checkpoint, dict) or "pneumo" not in checkpoint or "state_dict" not in checkpoint:
        raise PneumoError(
            f"{path} is not a pneumo checkpoint (no 'pneumo' metadata); use a best.ckpt or "
            "last.ckpt written by pneumo-train"
        )
    return checkpoint


def network_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The ResNet18 weights with torchvision's key names (no ``net.`` prefix)."""
    return {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


def refuse_diverged(path: str | Path, state: dict[str, torch.Tensor], threshold: float) -> None:
    """Refuse a checkpoint whose weights or threshold hold NaN or inf: a diverged run's."""
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise PneumoError(
            f"{path} holds non-finite weights (NaN or inf, e.g. {broken[0]}): its training run "
            "diverged; use an earlier checkpoint, or retrain with a lower model.optimizer.lr"
        )
    if not math.isfinite(threshold):
        raise PneumoError(
            f"{path} holds a non-finite decision threshold ({threshold}): its training run "
            "diverged; use an earlier checkpoint, or retrain with a lower model.optimizer.lr"
        )


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild the trained network from a checkpoint, in eval mode on the CPU."""
    checkpoint = read_checkpoint(path)
    meta = checkpoint["pneumo"]
    classes = list(meta["classes"])
    state = network_state_dict(checkpoint)
    threshold = float(meta.get("threshold", 0.5))
    refuse_diverged(path, state, threshold)
    net = build_resnet18(len(classes))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise PneumoError(f"{path}: weights do not fit a {len(classes)}-class ResNet18 ({err})") from err
    net.eval()
    prep = meta["preprocessing"]
    return LoadedModel(
        net=net,
        classes=classes,
        image_size=int(prep["image_size"]),
        mean=tuple(prep["mean"]),
        std=tuple(prep["std"]),
        threshold=threshold,
        path=Path(path),
        meta=meta,
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file, then rename: a run killed mid-save keeps the old one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        torch.save(checkpoint, partial)
        os.replace(partial, path)
