"""pneumo-train's settings, checked once before any film is listed or decoded: each value's
type and range, the devices that are there, and the rules between keys. A value that means
nothing is refused in one line naming the key and what to use instead."""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pneumo.errors import PneumoError

T = TypeVar("T")


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


def check_folds(data: dict[str, Any]) -> None:
    """Cross-validation's ``data.folds`` and ``data.fold``: both or neither, ``folds`` a whole
    number of 2 or more, ``0 <= fold < folds``."""
    folds, fold = data.get("folds"), data.get("fold")
    if folds is None and fold is None:
        return
    if folds is None or fold is None:
        given, missing = ("data.folds", "data.fold") if fold is None else ("data.fold", "data.folds")
        raise PneumoError(
            f"{given} is set but {missing} is not: give both (data.folds=5 data.fold=0), run every fold "
            "with cv=5fold, or neither"
        )
    if not (_is_int(folds) and folds >= 2):
        _refuse("data.folds", folds, "a whole number of folds, 2 or more (e.g. 5)")
    if not (_is_int(fold) and 0 <= fold < folds):
        _refuse("data.fold", fold, f"a fold number from 0 to {folds - 1} (data.folds={folds})")


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
    check_folds(plain.get("data") or {})


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
