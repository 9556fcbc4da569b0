"""What every command checks before it works: its flags, and pneumo-train's settings.

Flags are read by small typed validators (``probability``, ``positive_int``, ...) given to
argparse as ``type=``: a value that means nothing (``--threshold 1.5``, ``--batch-size 0``,
``nan``) is refused by ``ArgumentParser`` in one line on stderr with exit status 2, before a
checkpoint is loaded or a film read. ``check_train_config`` applies the same rules to
pneumo-train's config values before any film is decoded.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pneumo.artifacts.output import check_file_destination, check_folder_destination
from pneumo.artifacts.rundir import check_launch_dir
from pneumo.data.datamodule import MAX_IMAGE_SIZE
from pneumo.data.preprocess import MIN_SIDE
from pneumo.errors import PneumoError, exit_with

T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a refused flag said in one line (``error: prog: argument --x: why``) and
    exit status 2, instead of the usage block; ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


# -- flag types: each takes the text of one flag and returns its value, or refuses it -----------
def _number(text: str, kind: Callable[[str], T], what: str) -> T:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}: give a finite number")
    return value


def probability(text: str) -> float:
    """A probability: a finite number from 0 to 1 (``--threshold``)."""
    value = _number(text, float, "a probability")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability: use a number from 0 to 1, e.g. 0.5")
    return value


def positive_int(text: str) -> int:
    """A whole number of 1 or more (``--batch-size``, ``--epochs``)."""
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not valid: use a whole number of 1 or more")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of 0 or more (``--workers``)."""
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not valid: use a whole number of 0 or more")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (``--lr``)."""
    value = _number(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not valid: use a number above 0, e.g. 0.0003")
    return value


def image_size(text: str) -> int:
    """An image side in pixels pneumo can train at (``--resolution``), as ``data.image_size``."""
    value = _number(text, int, "a whole number of pixels")
    if not MIN_SIDE <= value <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text} is not valid: use at least {MIN_SIDE} px and at most {MAX_IMAGE_SIZE} px, e.g. 224"
        )
    return value


def non_empty(text: str) -> str:
    """Any text but an empty one (a path, a name)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value: give a path or a name")
    return text


def input_path(text: str) -> Path:
    """A path to read (a file or folder; whether it is there is checked where it is read)."""
    return Path(non_empty(text))


def _from_user_error(check: Callable[[str], T]) -> Callable[[str], T]:
    """A flag type from a check that raises ``PneumoError``: argparse then names the flag."""

    @functools.wraps(check)
    def read(text: str) -> T:
        try:
            return check(text)
        except PneumoError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return read


def output_file(*suffixes: str) -> Callable[[str], Path]:
    """A file to write, one of ``suffixes`` (any when none), where it can be written: not a
    folder, no file in the way of its folder, not in a read-only place."""

    def read(text: str) -> Path:
        path = Path(non_empty(text))
        if suffixes and path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(
                f"{text}: use a {' or '.join(suffixes)} file name (the extension chooses the format)"
            )
        _from_user_error(lambda _: check_file_destination(path, text))(text)
        return path

    read.__name__ = "file"  # argparse names the type in its messages
    return read


def output_folder(text: str) -> Path:
    """A folder to write into (made when missing) where it can be: not a file, no file in the
    way, not in a read-only place."""
    path = Path(non_empty(text))
    _from_user_error(lambda _: check_folder_destination(path, text))(text)
    return path


def comma_list(text: str) -> list[str]:
    """``A,B``: distinct names, comma-separated (``--classes``)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if len(names) != len(set(names)) or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give distinct names, comma-separated, e.g. NORMAL,PNEUMONIA"
        )
    return names


def key_values(text: str) -> dict[str, str | None]:
    """``K=V,...`` as a mapping, ``null`` read as None (``--columns``, ``--labels``)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE pairs, comma-separated")
    keys = [key.strip() for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise argparse.ArgumentTypeError(f"{text!r}: each KEY once")
    return {key.strip(): None if value.strip() == "null" else value.strip() for key, value in pairs}


# -- pneumo-train's settings ---------------------------------------------------------------------
def _precisions() -> list[Any]:
    """The precisions Lightning accepts, plus pneumo's ``auto``."""
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

    def flat(kind: Any) -> list[Any]:
        found: list[Any] = []
        for arg in typing.get_args(kind):
            found += list(typing.get_args(arg)) if typing.get_origin(arg) is typing.Literal else flat(arg)
        return found

    return ["auto", *flat(_PRECISION_INPUT)]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _refuse(key: str, value: Any, expected: str) -> NoReturn:
    raise PneumoError(f"{key}={value} is not valid: use {expected}")


def _max_time_ok(value: Any) -> bool:
    """``trainer.max_time``: null, ``DD:HH:MM:SS`` or a mapping of days/hours/minutes/seconds."""
    if value is None:
        return True
    if isinstance(value, str):
        parts = value.split(":")
        return len(parts) == 4 and all(p.isdigit() for p in parts) and any(int(p) for p in parts)
    if isinstance(value, dict):
        units = {"days", "hours", "minutes", "seconds"}
        return set(value) <= units and all(_is_number(v) and v >= 0 for v in value.values())
    return False


def _check_accelerator(trainer: dict[str, Any]) -> None:
    """A device that is there: ``trainer.accelerator=gpu`` without a GPU stops here, not after the
    films are listed and the network built."""
    import torch

    accelerator = str(trainer.get("accelerator", "auto")).lower()
    known = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "xla", "hpu")
    if accelerator not in known:
        _refuse("trainer.accelerator", accelerator, "auto, cpu, gpu or mps")
    if accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not available:
            raise PneumoError(
                f"trainer.accelerator={accelerator}, but this machine has no GPU PyTorch can use "
                f"(torch.cuda.is_available() is False, torch {torch.__version__}); train with "
                "trainer.accelerator=cpu (or auto), or on a machine with a CUDA GPU"
            )
        devices = trainer.get("devices", 1)
        if _is_int(devices) and devices > available:
            raise PneumoError(
                f"trainer.devices={devices}, but this machine has {available} GPU"
                f"{'s' if available != 1 else ''}; use trainer.devices={available} or fewer"
            )
    if accelerator == "mps" and not (torch.backends.mps.is_available()):
        raise PneumoError(
            "trainer.accelerator=mps, but this machine has no Apple GPU PyTorch can use; use "
            "trainer.accelerator=cpu (or auto)"
        )
    if accelerator in ("tpu", "xla", "hpu"):
        _refuse("trainer.accelerator", accelerator, "auto, cpu, gpu or mps (pneumo trains on these)")


def _check_trainer(trainer: dict[str, Any]) -> None:
    _check_accelerator(trainer)
    precision = trainer.get("precision", "auto")
    if precision not in _precisions() or isinstance(precision, bool):
        _refuse(
            "trainer.precision", precision, "auto, 32-true, bf16-mixed or 16-mixed (or 64-true, bf16-true)"
        )
    max_epochs = trainer.get("max_epochs")
    if max_epochs is not None and not (_is_int(max_epochs) and (max_epochs >= 1 or max_epochs == -1)):
        _refuse("trainer.max_epochs", max_epochs, "1 or more (-1: no limit)")
    min_epochs = trainer.get("min_epochs")
    if min_epochs is not None and not (_is_int(min_epochs) and min_epochs >= 0):
        _refuse("trainer.min_epochs", min_epochs, "0 or more")
    devices = trainer.get("devices", 1)
    if not (
        devices == "auto"
        or (_is_int(devices) and (devices >= 1 or devices == -1))
        or isinstance(devices, list)
    ):
        _refuse("trainer.devices", devices, "a number of devices (1 or more), -1 or auto")
    num_nodes = trainer.get("num_nodes", 1)
    if not (_is_int(num_nodes) and num_nodes >= 1):
        _refuse("trainer.num_nodes", num_nodes, "1 or more machines")
    for key in ("log_every_n_steps", "check_val_every_n_epoch"):
        value = trainer.get(key)
        if value is not None and not (_is_int(value) and value >= 1):
            _refuse(f"trainer.{key}", value, "a whole number of 1 or more")
    for key in ("limit_train_batches", "limit_val_batches"):
        value = trainer.get(key)
        if value is None:
            continue
        fraction = isinstance(value, float) and 0.0 < value <= 1.0
        count = _is_int(value) and value >= 1
        if not (fraction or count):
            _refuse(f"trainer.{key}", value, "a fraction in (0, 1] or a number of batches (1 or more)")
    if not _max_time_ok(trainer.get("max_time")):
        _refuse(
            "trainer.max_time", trainer.get("max_time"), "null or a wall time DD:HH:MM:SS, e.g. 00:04:00:00"
        )


def _check_model(model: dict[str, Any]) -> None:
    optimizer = model.get("optimizer") or {}
    lr = optimizer.get("lr")
    if lr is not None and not (_is_number(lr) and lr > 0):
        _refuse("model.optimizer.lr", lr, "a learning rate above 0, e.g. 0.0003")
    weight_decay = optimizer.get("weight_decay")
    if weight_decay is not None and not (_is_number(weight_decay) and weight_decay >= 0):
        _refuse("model.optimizer.weight_decay", weight_decay, "0 or more, e.g. 0.0001")
    for key, low, high, expected in (
        ("label_smoothing", 0.0, 0.999, "a value in [0, 1)"),
        ("mixup_alpha", 0.0, math.inf, "0 (off) or more"),
        ("target_sensitivity", 1e-9, 1.0, "a sensitivity in (0, 1], e.g. 0.95"),
    ):
        value = model.get(key)
        if value is not None and not (_is_number(value) and low <= value <= high):
            _refuse(f"model.{key}", value, expected)
    scheduler = model.get("scheduler") or {}
    target = str(scheduler.get("_target_", ""))
    if target.endswith("ReduceLROnPlateau"):
        factor, patience = scheduler.get("factor"), scheduler.get("patience")
        if factor is not None and not (_is_number(factor) and 0 < factor < 1):
            _refuse("model.scheduler.factor", factor, "a factor between 0 and 1, e.g. 0.5")
        if patience is not None and not (_is_int(patience) and patience >= 0):
            _refuse("model.scheduler.patience", patience, "0 or more epochs")
    eta_min = scheduler.get("eta_min")
    if eta_min is not None and not (_is_number(eta_min) and eta_min >= 0):
        _refuse("model.scheduler.eta_min", eta_min, "0 or more")
    weights = model.get("weights")
    if weights is not None and not (isinstance(weights, str) and weights.strip()):
        _refuse("model.weights", weights, "a torchvision weight name (IMAGENET1K_V1), a .pth file, or null")


def check_train_config(cfg: DictConfig) -> None:
    """Refuse, in one line naming the key, a setting that means nothing, before any film is
    listed or decoded: wrong types (``data.image_size=big``), values out of range
    (``model.optimizer.lr=-1``), a device that is not there (``trainer.accelerator=gpu`` on a
    machine without one), a precision Lightning does not know (``trainer.precision=8``).

    The data settings are checked by the DataModule itself (``XrayDataModule``) and
    ``model.weights`` when the network is built; both come before any decoding too.
    """
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise config_error(err) from None
    assert isinstance(plain, dict)  # a DictConfig's container is a dict
    if not _is_int(plain.get("seed")):
        _refuse("seed", plain.get("seed"), "a whole number")
    monitor = plain.get("monitor") or {}
    if monitor.get("mode") not in ("min", "max"):
        _refuse("monitor.mode", monitor.get("mode"), "min or max")
    _check_trainer(plain.get("trainer") or {})
    _check_model(plain.get("model") or {})


def config_error(err: OmegaConfBaseException | InstantiationException) -> PneumoError:
    """A config error from OmegaConf or Hydra (a missing value, an unknown key, an object that
    cannot be built) as one line naming the key."""
    if isinstance(err, InstantiationException):
        cause = err.__cause__ or err
        if isinstance(cause, PneumoError):
            return cause
        text = " ".join(str(cause).split()) or type(cause).__name__
        return PneumoError(f"cannot build the run from its config: {text[:400]}")
    key = getattr(err, "full_key", None)
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    if type(err).__name__ == "MissingMandatoryValue" and key:
        return PneumoError(f"{key} is required: give it on the command line, e.g. {key}=...")
    return PneumoError(f"{key}: {message}" if key and key not in message else message)


def config_errors(func: Callable[..., T]) -> Callable[..., T]:
    """Turn OmegaConf's and Hydra's config errors raised by a Hydra entry point into one line
    (``config_error``); wrap it inside ``exit_on_user_error``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return func(*args, **kwargs)
        except (OmegaConfBaseException, InstantiationException) as err:
            raise config_error(err) from None

    return wrapper


def writable_run_dir(hydra_entry: Callable[..., T]) -> Callable[..., T]:
    """Check, before Hydra creates it, that a Hydra command's run directory can be written
    (``hydra.run.dir`` as given, or ``outputs/`` for Hydra's default): a file in the way or a
    read-only place is one line and exit status 2, not Hydra's traceback. Put it above
    ``@hydra.main``; a call with a composed config (tests, code) is passed through unchecked."""

    @functools.wraps(hydra_entry)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        if not args and not kwargs:
            try:
                check_launch_dir(sys.argv[1:])
            except PneumoError as err:
                exit_with(err)
        return hydra_entry(*args, **kwargs)

    return wrapper


def quoted_command(prog: str, args: Sequence[str]) -> str:
    """A command line to copy into a shell: ``prog`` and ``args``, each quoted where it must be."""
    import shlex

    return " ".join([prog, *(shlex.quote(a) for a in args)])
