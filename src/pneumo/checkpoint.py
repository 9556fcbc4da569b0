"""Reading a pneumo checkpoint safely and rebuilding the classifier from it alone."""

from __future__ import annotations

import math
import pickle
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from pneumo.data.preprocess import preprocessing_spec
from pneumo.errors import PneumoError, printable
from pneumo.network import NUM_CLASSES, build_resnet18
from pneumo.output import atomic_path
from pneumo.provenance import files_fingerprint, record_files
from pneumo.threshold import POSITIVE_IF

if TYPE_CHECKING:
    from pneumo.data.datamodule import XrayDataModule


@dataclass(frozen=True)
class CheckpointMeta:
    """What a pneumo checkpoint says about itself, stored under ``checkpoint["pneumo"]``.

    Enough to use the file alone later: the classes and which one is positive, the
    preprocessing (``preprocessing_spec``), the decision threshold chosen on validation,
    the validation files (paths relative to the data root, with class names; ``None`` in
    checkpoints written before they were recorded), a fingerprint of the training files
    (``provenance.files_fingerprint``; ``None`` in older checkpoints) and the run's resolved
    config. A file written by pneumo-ensemble holds its first member's metadata with the
    ensemble's threshold, and under ``ensemble`` the member files and their thresholds
    (``{"members": [{"file": ..., "threshold": ...}, ...]}``; ``None`` for a trained run).
    """

    classes: list[str]
    positive_class: str
    preprocessing: dict[str, Any]
    threshold: float = 0.5
    val_files: list[list[str]] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    train_files: dict[str, Any] | None = None
    ensemble: dict[str, Any] | None = None

    @property
    def positive_index(self) -> int:
        """The positive class's column in the network's output."""
        return self.classes.index(self.positive_class)

    @property
    def image_size(self) -> int:
        return int(self.preprocessing["image_size"])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.preprocessing["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.preprocessing["std"])

    def refuse_ensemble(self, path: str | Path, action: str, instead: str) -> None:
        """Stop ``action``, which needs one trained network, when ``path`` is an ensemble; the
        line names its members and says what to do ``instead``."""
        if self.ensemble is not None:
            files = ", ".join(printable(m["file"]) for m in self.ensemble["members"])
            raise PneumoError(
                f"{path} is an ensemble of {len(self.ensemble['members'])} models ({files}) written by "
                f"pneumo-ensemble: {action} needs one trained network; {instead}"
            )

    def as_dict(self) -> dict[str, Any]:
        """Plain data, loadable with ``torch.load(weights_only=True)``."""
        return asdict(self)

    @classmethod
    def for_run(cls, datamodule: XrayDataModule, config: dict[str, Any]) -> CheckpointMeta:
        """The metadata of a run about to train on ``datamodule`` with the resolved ``config``."""
        return cls(
            classes=list(datamodule.classes),
            positive_class=datamodule.positive_class,
            preprocessing=preprocessing_spec(datamodule.image_size),
            # file by file, so pneumo-eval data.split=val and a resume use exactly this split
            val_files=record_files(datamodule.split_samples()[1], datamodule.root, datamodule.classes),
            config=config,
            # a resume must train on the same films, which the validation files alone do not show
            train_files=files_fingerprint(datamodule.split_samples()[0], datamodule.root, datamodule.classes),
        )


def read_meta(checkpoint: dict[str, Any], path: str | Path) -> CheckpointMeta:
    """The ``CheckpointMeta`` of a loaded checkpoint; one line naming what is missing or wrong."""
    raw = checkpoint.get("pneumo")
    if not isinstance(raw, dict):
        raise PneumoError(
            f"{path} has no pneumo metadata; use a best.ckpt or last.ckpt written by pneumo-train"
        )
    try:
        if not isinstance(raw["classes"], list):
            raise TypeError(f"classes is {raw['classes']!r}, not a list")
        classes = [str(c) for c in raw["classes"]]
        preprocessing = dict(raw["preprocessing"])
        meta = CheckpointMeta(
            classes=classes,
            # older checkpoints: column 1 was the positive class
            positive_class=str(raw.get("positive_class", classes[1])),
            preprocessing=preprocessing,
            threshold=float(raw.get("threshold", 0.5)),
            val_files=raw.get("val_files"),
            config=dict(raw.get("config") or {}),
            train_files=raw.get("train_files"),
            ensemble=raw.get("ensemble"),
        )
        if len(meta.mean) != 3 or len(meta.std) != 3 or meta.image_size < 1:
            raise ValueError(f"preprocessing {preprocessing!r} lacks a size and 3-channel mean and std")
        files = meta.val_files or []
        if not isinstance(files, list) or any(len(f) != 2 or f[1] not in classes for f in files):
            raise ValueError("val_files is not a list of [path, class name] pairs")
        if not isinstance(meta.config, dict) or not isinstance(meta.config.get("model", {}), dict):
            raise ValueError("config is not a mapping")
        if meta.ensemble is not None and not (
            isinstance(meta.ensemble["members"], list)
            and len(meta.ensemble["members"]) >= 2
            and all(
                isinstance(m["file"], str) and isinstance(m["threshold"], float)
                for m in meta.ensemble["members"]
            )
        ):
            raise ValueError("ensemble is not a list of two members or more, each a file and its threshold")
    except (KeyError, TypeError, ValueError) as err:
        raise PneumoError(
            f"{path}: its pneumo metadata is incomplete or malformed ({type(err).__name__}: {err}); "
            "use a checkpoint written by pneumo-train"
        ) from err
    if len(classes) != NUM_CLASSES or meta.positive_class not in classes:
        raise PneumoError(
            f"{path}: its metadata lists classes {classes} with positive class {meta.positive_class!r}; "
            f"pneumo models have {NUM_CLASSES} classes, one of them positive"
        )
    return meta


@dataclass
class LoadedModel:
    """A ready-to-run network (eval mode) with what a user needs to apply it."""

    net: nn.Module
    meta: CheckpointMeta
    path: Path

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    @property
    def positive_index(self) -> int:
        return self.meta.positive_index

    @property
    def image_size(self) -> int:
        return self.meta.image_size

    @property
    def mean(self) -> tuple[float, ...]:
        return self.meta.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.meta.std

    @property
    def threshold(self) -> float:
        return self.meta.threshold

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
            "positive_class": self.meta.positive_class,
            "positive_if": POSITIVE_IF,
        }


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``; explain every way the file can be wrong.

    Nothing is ever unpickled beyond tensors and plain data: a file that would need more is
    refused, and the message never suggests loading it unsafely.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "not found"
        raise PneumoError(f"checkpoint {what}: {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; raw pickles are refused unread
        raise PneumoError(
            f"{path} is not a PyTorch checkpoint (torch.save writes a zip archive; this file is "
            f"{path.stat().st_size} bytes of something else); refused without reading it. Use a "
            "best.ckpt or last.ckpt written by pneumo-train"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise PneumoError(
            f"{path} holds pickled Python objects or code that pneumo refuses to load (unpickling "
            "them could run arbitrary code); pneumo checkpoints contain only tensors and plain "
            "data. Use a checkpoint written by pneumo-train"
        ) from err
    except Exception as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise PneumoError(f"{path} is a damaged PyTorch checkpoint ({reason})") from err
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


def _untrained_network(meta: CheckpointMeta) -> tuple[nn.Module, str]:
    """A network of the checkpoint's shape, and that shape in words: a ResNet18, or for a file
    written by pneumo-ensemble the ``ensemble.Ensemble`` of its members."""
    if meta.ensemble is None:
        return build_resnet18(len(meta.classes)), "ResNet18"
    from pneumo.ensemble import Ensemble  # ensemble.py builds on this module

    members = [build_resnet18(len(meta.classes)) for _ in meta.ensemble["members"]]
    return Ensemble(members), f"ensemble of {len(members)} ResNet18s"


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild the trained network (``_untrained_network``) from a checkpoint, in eval mode on the CPU."""
    checkpoint = read_checkpoint(path)
    meta = read_meta(checkpoint, path)
    # a trained run's weights carry Lightning's net. prefix; an ensemble's are its own (members.K.)
    state = network_state_dict(checkpoint) if meta.ensemble is None else checkpoint["state_dict"]
    refuse_diverged(path, state, meta.threshold)
    if meta.ensemble is not None:
        # checked before one network per listed member is built: the list alone could ask for any number
        held = {
            k.split(".")[1]
            for k in state
            if isinstance(k, str) and k.startswith("members.") and k.count(".") > 1
        }
        if len(held) != len(meta.ensemble["members"]):
            raise PneumoError(
                f"{path}: its metadata lists {len(meta.ensemble['members'])} ensemble members, but it "
                f"holds the weights of {len(held)}; use a file written by pneumo-ensemble"
            )
    net, shape = _untrained_network(meta)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise PneumoError(f"{path}: weights do not fit a {len(meta.classes)}-class {shape} ({err})") from err
    net.eval()
    return LoadedModel(net=net, meta=meta, path=Path(path))


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors inside a checkpoint: about the size of its file."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints whole or not at all (``output.atomic_path``): a run killed mid-save,
    or a disk that fills, keeps the earlier checkpoints and leaves no partial file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with atomic_path(path, size_hint=_tensor_bytes(checkpoint)) as partial, partial.open("wb") as file:
            # through a Python file, a full disk surfaces as OSError(ENOSPC), not torch's C++ error
            torch.save(checkpoint, file)
