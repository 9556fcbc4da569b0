"""The checkpoint schema (``CheckpointMeta``), reading a checkpoint safely, and writing one atomically."""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import signal
import threading
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pneumo.artifacts.output import atomic_path
from pneumo.errors import PneumoError, printable

log = logging.getLogger(__name__)

# A binary classifier: the positive class and the other one.
NUM_CLASSES = 2


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
    # temperature scaling fitted on the validation films: {"method": "temperature",
    # "temperature": T, "fitted_on": ..., "films": n}; None (older checkpoints): T = 1
    calibration: dict[str, Any] | None = None
    # what made the file: {"torch": ..., "torchvision": ..., "lightning": ..., "pneumo": ...,
    # "git_commit": ... (when pneumo ran from a git checkout)}; None in older checkpoints
    versions: dict[str, str] | None = None
    # the tracker runs holding the run's figures, by tracker ({"mlflow": {"tracking_uri": ...,
    # "experiment_id": ..., "run_id": ...}}); pneumo-eval logs its figures there. None: none known
    trackers: dict[str, Any] | None = None

    @property
    def temperature(self) -> float:
        """The logits' divisor before the softmax: every probability pneumo gives is calibrated."""
        return float(self.calibration["temperature"]) if self.calibration else 1.0

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
            calibration=raw.get("calibration"),
            versions=raw.get("versions"),
            trackers=raw.get("trackers"),
        )
        if not (math.isfinite(meta.temperature) and meta.temperature > 0):
            raise ValueError(f"calibration {meta.calibration!r} has no positive, finite temperature")
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


# How torch's weights-only unpickler refuses objects and calls, as against bytes it cannot read
_REFUSED_OBJECTS = ("unsupported global", "unrecognized function", "can only build")


def safe_torch_load(path: Path, name: str, unsafe: str, damaged: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU: tensors and plain data, nothing else
    unpickled; a file it cannot load so is refused in one line that starts with ``name`` and
    never suggests loading it unsafely.

    A file that holds pickled Python objects or calls (torch names what it refused) is said to
    hold them, followed by ``unsafe`` (what they are, what to use instead); any other (random
    or damaged bytes) ``damaged``, with its size and torch's first line.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if any(refused in str(err).lower() for refused in _REFUSED_OBJECTS):
            raise PneumoError(f"{name} holds pickled Python objects {unsafe}") from None
        # torch's own text here advises weights_only=False: never repeated
        reason = "bytes of something else, or a damaged file"
    except Exception as err:
        text = str(err).strip()
        reason = text.splitlines()[0][:200] if text else type(err).__name__
    raise PneumoError(f"{name} {damaged} ({path.stat().st_size} bytes; {reason})") from None


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
    checkpoint = safe_torch_load(
        path,
        str(path),
        unsafe="or code that pneumo refuses to load (unpickling them could run arbitrary code); pneumo "
        "checkpoints contain only tensors and plain data. Use a checkpoint written by pneumo-train",
        damaged="is a damaged PyTorch checkpoint",
    )
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


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors inside a checkpoint: about the size of its file."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


@contextlib.contextmanager
def ctrl_c_after(deliver: bool = True) -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that comes inside the block until the block has ended, then
    deliver it (``deliver=False``: drop it, for a save made while the run already stops); a
    second Ctrl-C acts at once. KeyboardInterrupt raised inside torch.save's writes leaves its
    zip writer mid-record: the run ended in a RuntimeError ("unexpected pos") and exit status
    1, without interrupted.ckpt, instead of Lightning's save and stop. A block that fails with
    a Ctrl-C held says why in the log, then stops as Ctrl-C. Only the main thread receives
    signals; a Ctrl-C ignored (nohup, a background job) stays ignored."""
    before = signal.getsignal(signal.SIGINT)
    # None: a handler set in C, which Python cannot set back
    if threading.current_thread() is not threading.main_thread() or before in (None, signal.SIG_IGN):
        yield
        return
    came: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        came.append(signum)
        signal.signal(signal.SIGINT, before)  # the next Ctrl-C acts at once (a save that hangs)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    except Exception as error:
        _restore_ctrl_c(before)
        if not (came and deliver):
            raise
        log.error("%s", error)
        raise KeyboardInterrupt from error  # the user's Ctrl-C still stops the run
    except BaseException:
        _restore_ctrl_c(before)
        raise
    _restore_ctrl_c(before)
    if came and deliver:
        signal.raise_signal(signal.SIGINT)  # to the handler before: KeyboardInterrupt, as a rule


def _restore_ctrl_c(handler: Any) -> None:
    """Set SIGINT's handler back, even when another signal's handler raises as it is set."""
    try:
        signal.signal(signal.SIGINT, handler)
    except BaseException:  # the other handler's exception, raised before SIGINT's was set
        signal.signal(signal.SIGINT, handler)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints whole or not at all (``output.atomic_path``): a run killed mid-save,
    or a disk that fills, keeps the earlier checkpoints and leaves no partial file; Ctrl-C
    during a save stops the run once the file is whole (``ctrl_c_after``)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with (
            ctrl_c_after(),
            atomic_path(path, size_hint=_tensor_bytes(checkpoint)) as partial,
            partial.open("wb") as file,
        ):
            # through a Python file, a full disk surfaces as OSError(ENOSPC), not torch's C++ error
            torch.save(checkpoint, file)
