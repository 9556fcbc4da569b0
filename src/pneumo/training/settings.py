"""pneumo-train's settings, every one checked here, once, before any film is listed or decoded:
each value's type and range, the devices that are there, and the rules between keys. A value
that means nothing is refused in one line naming the key and what to use instead.

Every path into a run passes through ``check_train_config``: ``training.fit.train`` calls it
first (pneumo-train, each pneumo-search trial, and code or tests that train), and pneumo-search
checks its shared settings with it before the first trial. The DataModule, the LightningModule
and the network trust their arguments: built directly from code, they are checked by whoever
builds them.

One validation module rather than Hydra structured configs (dataclasses in Hydra's
ConfigStore): several values are unions (``trainer.max_time``: null, a string or a mapping;
``trainer.devices``: a number, a list or ``auto``; ``model.compile``: a bool or a backend
name), which OmegaConf's structured configs type weakly, and their errors run over several
lines; ranges, device checks and the rules between keys would need this code anyway.
"""

from __future__ import annotations

import functools
import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pneumo.data.cache import CACHE_MODES
from pneumo.data.datamodule import BALANCE_MODES, MAX_IMAGE_SIZE
from pneumo.data.dataset import DEFAULT_CLASSES
from pneumo.data.preprocess import MIN_SIDE
from pneumo.data.provenance import ABSENT, config_value
from pneumo.data.split import HOLDOUTS
from pneumo.errors import PneumoError
from pneumo.model.threshold import THRESHOLD_METHODS

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
    """``trainer.max_time``: ``DD:HH:MM:SS`` or a mapping of days/hours/minutes/seconds."""
    if isinstance(value, str):
        parts = value.split(":")
        return len(parts) == 4 and all(p.isdigit() for p in parts) and any(int(p) for p in parts)
    if isinstance(value, dict):
        units = {"days", "hours", "minutes", "seconds"}
        return set(value) <= units and all(_is_number(v) and v >= 0 for v in value.values())
    return False


def _compile_ok(value: Any) -> bool:
    """``model.compile``: false, true (inductor) or a ``torch.compile`` backend this PyTorch has."""
    if isinstance(value, bool):
        return True
    import torch

    return isinstance(value, str) and value in torch.compiler.list_backends(exclude_tags=())


def _compile_choices() -> str:
    """What ``model.compile`` may be, for its message."""
    import torch

    return f"false, true (inductor) or a torch.compile backend ({', '.join(torch.compiler.list_backends())})"


@dataclass(frozen=True)
class Rule:
    """One key's check: ``ok(value)`` or the run is refused, saying to use ``use``.

    A key the config leaves out is not checked (the constructor's default applies); ``null``
    passes only where it means something (``nullable``: Lightning's default, no limit).
    ``required``: a key read with no default to fall back on. ``quoted`` shows the value as
    Python writes it (``'yuden'``), where a name is expected. ``when``: the rule holds only for
    configs it accepts (a schedule's keys, under that schedule).
    """

    key: str
    ok: Callable[[Any], bool]
    use: str | Callable[[], str]
    nullable: bool = False
    quoted: bool = False
    required: bool = False
    when: Callable[[dict[Any, Any]], bool] | None = None


def _whole(low: int, *also: int) -> Callable[[Any], bool]:
    """A whole number of ``low`` or more (or one of ``also``, e.g. -1 for "no limit")."""
    return lambda v: _is_int(v) and (v >= low or v in also)


def _between(low: float, high: float, low_in: bool = True, high_in: bool = True) -> Callable[[Any], bool]:
    """A finite number from ``low`` to ``high``; ``low_in``/``high_in``: the bound itself allowed."""
    return lambda v: (
        _is_number(v) and (low <= v if low_in else low < v) and (v <= high if high_in else v < high)
    )


def _one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in choices


def _choices(names: tuple[str, ...]) -> str:
    return f"one of {', '.join(names)}"


def _batches(value: Any) -> bool:
    """``trainer.limit_*_batches``: a fraction in (0, 1] or a number of batches."""
    return (isinstance(value, float) and 0.0 < value <= 1.0) or (_is_int(value) and value >= 1)


def _devices(value: Any) -> bool:
    return value == "auto" or (_is_int(value) and (value >= 1 or value == -1)) or isinstance(value, list)


def _schedule(name: str) -> Callable[[dict[Any, Any]], bool]:
    """Whether ``model/scheduler`` chose the torch schedule ``name``."""
    return lambda config: str(config_value(config, "model.scheduler._target_")).endswith(f".{name}")


def _weights(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


INF = math.inf

# Every key's own check, in the order a run reads them; the rules between keys follow below.
RULES: tuple[Rule, ...] = (
    Rule("seed", _is_int, "a whole number", required=True),
    Rule("monitor.mode", _one_of("min", "max"), "min or max", required=True),
    # data: the DataModule's arguments
    Rule("data.batch_size", _whole(1), "a positive number of images"),
    Rule(
        "data.image_size",
        lambda v: _is_int(v) and MIN_SIDE <= v <= MAX_IMAGE_SIZE,
        f"at least {MIN_SIDE} px and at most {MAX_IMAGE_SIZE} px, a whole number (e.g. 224)",
    ),
    Rule("data.num_workers", _whole(0), "0 or more loader processes"),
    Rule("data.val_fraction", _between(0.0, 1.0, False, False), "a fraction above 0 and below 1, e.g. 0.1"),
    Rule("data.val_holdout", _one_of(*HOLDOUTS), _choices(HOLDOUTS), quoted=True),
    Rule("data.min_val_images", _whole(0), "0 or more"),
    Rule("data.balance", _one_of(*BALANCE_MODES), _choices(BALANCE_MODES), quoted=True),
    Rule("data.on_bad_image", _one_of("skip", "fail"), "skip or fail", quoted=True),
    # true / false: older configs' auto / off, which YAML also reads `off` as
    Rule(
        "data.cache",
        lambda v: isinstance(v, bool) or v in CACHE_MODES,
        _choices(CACHE_MODES),
        quoted=True,
    ),
    Rule("data.seed", _is_int, "a whole number"),
    # trainer: Lightning's Trainer arguments (the accelerator is checked against this machine)
    Rule(
        "trainer.precision",
        lambda v: not isinstance(v, bool) and v in _precisions(),
        "auto, 32-true, bf16-mixed or 16-mixed (or 64-true, bf16-true)",
    ),
    Rule("trainer.max_epochs", _whole(1, -1), "1 or more (-1: no limit)", nullable=True),
    Rule("trainer.min_epochs", _whole(0), "0 or more", nullable=True),
    Rule("trainer.devices", _devices, "a number of devices (1 or more), -1 or auto"),
    Rule("trainer.num_nodes", _whole(1), "1 or more machines"),
    Rule("trainer.log_every_n_steps", _whole(1), "a whole number of 1 or more", nullable=True),
    Rule("trainer.check_val_every_n_epoch", _whole(1), "a whole number of 1 or more", nullable=True),
    Rule(
        "trainer.limit_train_batches",
        _batches,
        "a fraction in (0, 1] or a number of batches (1 or more)",
        nullable=True,
    ),
    Rule(
        "trainer.limit_val_batches",
        _batches,
        "a fraction in (0, 1] or a number of batches (1 or more)",
        nullable=True,
    ),
    Rule(
        "trainer.max_time",
        _max_time_ok,
        "null or a wall time DD:HH:MM:SS, e.g. 00:04:00:00",
        nullable=True,
    ),
    # model: the LightningModule's arguments, and the network's starting weights
    Rule(
        "model.weights",
        _weights,
        "a torchvision weight name (IMAGENET1K_V1), a .pth file, or null",
        nullable=True,
    ),
    Rule(
        "model.optimizer.lr",
        _between(0.0, INF, low_in=False),
        "a learning rate above 0, e.g. 0.0003",
        nullable=True,
    ),
    Rule("model.optimizer.weight_decay", _between(0.0, INF), "0 or more, e.g. 0.0001", nullable=True),
    Rule("model.optimizer.fused", lambda v: isinstance(v, bool), "true or false", nullable=True),
    Rule("model.scheduler.eta_min", _between(0.0, INF), "0 or more", nullable=True),
    Rule(
        "model.scheduler.factor",
        _between(0.0, 1.0, False, False),
        "a factor between 0 and 1, e.g. 0.5",
        nullable=True,
        when=_schedule("ReduceLROnPlateau"),
    ),
    Rule(
        "model.scheduler.patience",
        _whole(0),
        "0 or more epochs",
        nullable=True,
        when=_schedule("ReduceLROnPlateau"),
    ),
    # T_max follows trainer.max_epochs: a run without an epoch limit gives the cosine no end
    Rule(
        "model.scheduler.T_max",
        _whole(1),
        "1 or more epochs (model/scheduler=cosine decays over trainer.max_epochs: give the run an "
        "epoch limit, or set model.scheduler.T_max)",
        required=True,
        when=_schedule("CosineAnnealingLR"),
    ),
    Rule("model.label_smoothing", _between(0.0, 1.0, high_in=False), "a value in [0, 1)"),
    Rule("model.mixup_alpha", _between(0.0, INF), "0 (off) or more"),
    Rule("model.threshold_method", _one_of(*THRESHOLD_METHODS), _choices(THRESHOLD_METHODS), quoted=True),
    Rule("model.target_sensitivity", _between(0.0, 1.0, low_in=False), "a sensitivity in (0, 1], e.g. 0.95"),
    Rule("model.plateau_tolerance", _between(0.0, 1.0, high_in=False), "a value in [0, 1)"),
    Rule("model.compile", _compile_ok, _compile_choices, nullable=True, quoted=True),
    # pneumo-search's config only (conf/search.yaml): a search of no trial would run nothing
    Rule("search.n_trials", _whole(1), "a number of trials, 1 or more (e.g. 20)"),
)


def check_rule(rule: Rule, config: dict[Any, Any]) -> None:
    """Refuse ``rule.key``'s value in ``config`` (a plain, resolved config) if it means nothing."""
    if rule.when is not None and not rule.when(config):
        return
    value = config_value(config, rule.key)
    if value is ABSENT:
        if not rule.required:
            return
        value = None
    if (value is None and rule.nullable) or rule.ok(value):
        return
    use = rule.use() if callable(rule.use) else rule.use
    _refuse(rule.key, repr(value) if rule.quoted else value, use)


def check_value(key: str, value: Any) -> None:
    """Refuse ``value`` for the config key ``key`` as ``check_train_config`` would: for a flag
    that stands for a setting (``scripts/benchmark.py --compile-backend``: ``model.compile``)."""
    [rule] = [r for r in RULES if r.key == key]
    config: dict[str, Any] = {}
    node = config
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    check_rule(rule, config)


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


def _check_classes(data: dict[str, Any]) -> None:
    """Two class folder names, one of them the positive class."""
    classes = data.get("classes", list(DEFAULT_CLASSES))
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        _refuse(
            "data.classes",
            repr(classes),
            "a list of the two class folder names, e.g. data.classes=[NORMAL,PNEUMONIA]",
        )
    positive = data.get("positive_class", "PNEUMONIA")
    if len(classes) != 2 or len(set(classes)) != 2 or positive not in classes:
        raise PneumoError(
            f"data.classes={classes} with data.positive_class={positive!r}: pneumo sorts "
            "films into two classes, named by their folders, one of which is the positive class"
        )


def _check_epochs(trainer: dict[str, Any]) -> None:
    """``trainer.min_epochs`` within ``trainer.max_epochs``: Lightning stops at the latter anyway."""
    least, most = trainer.get("min_epochs"), trainer.get("max_epochs")
    if least is not None and most is not None and most != -1 and least > most:
        raise PneumoError(
            f"trainer.min_epochs={least} is not valid with trainer.max_epochs={most}: use at most "
            f"{most}, or raise trainer.max_epochs"
        )


def _on_cpu(trainer: dict[str, Any]) -> bool:
    """Whether the run will train on the CPU: asked for, or ``auto`` with no GPU to use."""
    import torch

    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator == "auto":
        return not torch.cuda.is_available() and not torch.backends.mps.is_available()
    return accelerator == "cpu"


def _check_half_precision(trainer: dict[str, Any]) -> None:
    """``trainer.precision=16-mixed`` only where float16 runs: on a CPU Lightning would train in
    bf16-mixed instead, saying so on stderr only, while the checkpoints recorded 16-mixed."""
    precision = trainer.get("precision", "auto")
    if str(precision) in ("16-mixed", "16") and _on_cpu(trainer):
        raise PneumoError(
            f"trainer.precision={precision} needs a GPU: on a CPU, mixed precision is bfloat16; use "
            "trainer.precision=bf16-mixed, 32-true or auto"
        )


def _check_fused_optimizer(model: dict[str, Any], trainer: dict[str, Any]) -> None:
    """``model.optimizer.fused`` only for an optimizer that takes it, not with ``foreach``, and not
    where Lightning cannot clip its gradients (any mixed precision refuses a fused optimizer)."""
    optimizer = model.get("optimizer") or {}
    if optimizer.get("fused") is None:
        return
    from hydra.utils import get_class

    target = str(optimizer.get("_target_", ""))
    try:
        accepts = "fused" in inspect.signature(get_class(target)).parameters
    except Exception:  # an optimizer Hydra cannot find is named when the run builds it
        return
    if not accepts:
        raise PneumoError(
            f"model.optimizer.fused={optimizer['fused']}: {target} takes no fused argument; drop it "
            "with ~model.optimizer.fused"
        )
    mixed = str(trainer.get("precision", "auto")) in ("16-mixed", "16", "bf16-mixed", "bf16", "auto")
    if optimizer["fused"] and mixed and trainer.get("gradient_clip_val"):
        raise PneumoError(
            f"trainer.gradient_clip_val with trainer.precision={trainer.get('precision', 'auto')} needs "
            "model.optimizer.fused=false: Lightning cannot clip a fused optimizer's gradients under mixed "
            "precision (auto: bf16-mixed where the machine has it)"
        )
    if optimizer["fused"] and optimizer.get("foreach"):
        _refuse(
            "model.optimizer.foreach", optimizer["foreach"], "null or false with model.optimizer.fused=true"
        )


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
    machine without one), a precision Lightning does not know (``trainer.precision=8``), and
    keys that contradict each other (``data.positive_class`` not among ``data.classes``).

    What only the files can tell is checked where they are read: the data root and the
    manifest as the DataModule lists the films, ``model.weights`` as the network is built.
    """
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise config_error(err) from None
    assert isinstance(plain, dict)  # a DictConfig's container is a dict
    for rule in RULES:
        check_rule(rule, plain)
    _check_accelerator(plain.get("trainer") or {})
    _check_classes(plain.get("data") or {})
    _check_epochs(plain.get("trainer") or {})
    _check_half_precision(plain.get("trainer") or {})
    _check_fused_optimizer(plain.get("model") or {}, plain.get("trainer") or {})
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
