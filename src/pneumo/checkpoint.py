"""Reading a pneumo checkpoint safely and rebuilding the classifier from it alone."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from pneumo.errors import PneumoError
from pneumo.model import build_resnet18


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
        """The preprocessing the model was trained with, plus its decision threshold."""
        return {**self.meta["preprocessing"], "threshold": self.threshold}


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


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild the trained network from a checkpoint, in eval mode on the CPU."""
    checkpoint = read_checkpoint(path)
    meta = checkpoint["pneumo"]
    classes = list(meta["classes"])
    net = build_resnet18(len(classes))
    try:
        net.load_state_dict(network_state_dict(checkpoint))
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
        threshold=float(meta.get("threshold", 0.5)),
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
