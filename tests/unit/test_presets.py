"""Every preset a user selects (every file in conf/'s option folders, found there, so a new one
is covered without editing this file) changes what it says and each changed setting, nested ones
included, reaches the object built from it: the DataModule or its augmentation, the
LightningModule or its optimizer and schedule, the Trainer, a callback or a tracker. Nothing is
trained: composing and building cost well under a second a preset."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Timer
from omegaconf import OmegaConf, open_dict

from pneumo.training.build import build
from tests.helpers import REPO, SAMPLE, make_cfg

CONF = REPO / "conf"

# What every build here needs (no data set, download or GPU): pinned when building, left out
# when comparing, so that a preset's own value for these keys shows in the comparison (and is
# excused below). seed=7 makes a preset that fixes data.seed (ensemble=seeds) visible.
BUILD_HERE = [f"data.root={SAMPLE}", "model.weights=null", "trainer.accelerator=cpu"]
COMPARE = ["seed=7"]

# The config each option is compared against, by what it is selected with: an ablation is one
# change to the recipe it belongs to; ablation=ema is a switch for any run (the recipe averages
# its weights already).
BASES = {"ablation": ["experiment=kermany_cpu"], "ablation=ema": []}
# what a sweep preset's sweeper gives each job, where the job is built here without a sweep
JOB_OF_SWEEP = {"cv": ["data.fold=0"]}

# Files under conf/ that are not options a user selects on their own, and where they are tested.
NOT_PRESETS = {
    "hparams_search/default": "the search space conf/search.yaml selects: "
    "test_configs.py::test_the_search_config_is_train_plus_the_search_space",
}

# Changed keys whose effect cannot be read off a built object, each with the reason. A key
# matches an entry equal to it, or starting with it when the entry ends in a dot, or ending
# with it when the entry starts with one.
NOT_ON_AN_OBJECT = {
    # read by Hydra before any object exists: run and sweep folders, the sweep's mode and
    # parameters, launchers and their callbacks (tests/cli/test_ensemble_sweep.py,
    # tests/cli/test_launcher.py and tests/run/test_tracking.py run them)
    "hydra.": "Hydra's own settings",
    # names the run folders through hydra.run.dir; the trackers take it through interpolation
    # (logger.mlflow.experiment_name, logger.wandb.group), checked as those keys
    "task_name": "a folder name",
    # what the training function returns to a sweeper, after fitting (tests/cli/test_search.py)
    "optimized_metric": "read after fitting",
    # reaches the objects only through its interpolations (model.monitor, callbacks.*.monitor and
    # .mode, model.scheduler.mode), each of which is checked as its own key
    "monitor.": "interpolated into other keys",
    # Hydra's instruction to build a factory instead of an object; the object it makes is checked
    "._partial_": "how Hydra builds the node",
    # pinned by BUILD_HERE: the bundled sample, scratch weights, the CPU (the presets' own values
    # are checked as composed by test_configs.py::test_experiments_pin_their_trainer and
    # test_each_trainer_preset_composes_and_builds)
    "data.root": "pinned here",
    "model.weights": "pinned here",
    "trainer.accelerator": "pinned here",
}


# Hydra's record of the command line, which differs whenever the command line does
RECORDS = ("hydra.overrides.", "hydra.job.override_dirname", "hydra.runtime.choices.")


def _excused(key: str) -> bool:
    return any(
        key == entry
        or (entry.endswith(".") and key.startswith(entry))
        or (entry.startswith(".") and key.endswith(entry))
        for entry in NOT_ON_AN_OBJECT
    )


def _composed(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    """The whole resolved config, Hydra's own section included, as ``{dotted.key: value}``."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pneumo.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    # Hydra's own section as written (its sweep folders need a job number a composition lacks)
    hydra = OmegaConf.to_container(cfg.hydra, resolve=False)
    with open_dict(cfg):
        del cfg.hydra
    return _flat({**OmegaConf.to_container(cfg, resolve=True), "hydra": hydra})


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _choices() -> dict[str, str]:
    """The config groups of a run and the option each takes by default (``data/augment: default``)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pneumo.conf", version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    return {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}


def _presets() -> list[tuple[list[str], list[str], bool]]:
    """Every option file under conf/ as (base overrides, overrides with the option, whether it
    should change anything)."""
    groups = _choices()
    callback_parts = OmegaConf.load(CONF / "callbacks" / "default.yaml").defaults
    presets = []
    for path in sorted(CONF.rglob("*.yaml")):
        relative = path.relative_to(CONF).with_suffix("").as_posix()
        if "/" not in relative or relative in NOT_PRESETS:
            continue  # train.yaml, eval.yaml, search.yaml: the configs, not options
        group = max((g for g in groups if relative.startswith(f"{g}/")), key=len, default=None)
        assert group is not None, f"conf/{relative}.yaml belongs to no config group: add it to NOT_PRESETS"
        name = relative[len(group) + 1 :]
        # a callback file joins the default ones (callbacks=[default,ema]); those in the default
        # list are in every run already
        option = f"callbacks=[default,{name}]" if group == "callbacks" else f"{group}={name}"
        base = BASES.get(option, BASES.get(group, []))
        changes = name != groups[group] and name not in callback_parts and option != "ablation=recipe"
        presets.append((base, [*base, option, *JOB_OF_SWEEP.get(group, [])], changes))
    return presets


PRESETS = _presets()


@dataclass
class Built:
    """What a config builds, with the nodes it was built from."""

    datamodule: Any
    model: Any
    trainer: Any
    optimizer: Any
    scheduler: Any
    config: dict[str, Any]


def _built(cfg) -> Built:
    datamodule, model, trainer = build(cfg)
    configured = model.configure_optimizers()
    if isinstance(configured, dict):
        optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    else:
        optimizer, scheduler = configured, None
    return Built(datamodule, model, trainer, optimizer, scheduler, OmegaConf.to_container(cfg, resolve=True))


def _setting(obj: Any, name: str) -> Any:
    """A built object's setting: Lightning keeps most under a leading underscore."""
    for attr in (f"_{name}", name):
        if hasattr(obj, attr):
            return getattr(obj, attr)
    raise AssertionError(f"{type(obj).__name__} has no setting {name!r}")


def _ema_decay(callback: Any) -> float:
    """The decay of an EMA callback, from what its averaging does: ema 1, weight 0 gives decay."""
    one, zero = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    return float(callback._kwargs["avg_fn"](one, zero, torch.tensor(1)))


# Settings read from a built object by something other than their name
SPECIAL = {
    ("EMAWeightAveraging", "decay"): _ema_decay,
    ("WandbLogger", "group"): lambda logger: logger._wandb_init["group"],
}


def _seconds(text: str) -> float:
    days, hours, minutes, seconds = (int(part) for part in text.split(":"))
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _trainer_setting(trainer: Any, name: str, expected: Any) -> tuple[Any, Any]:
    """(what the Trainer holds, what the config value means there)."""
    if name == "max_time":
        timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
        return timer._duration, _seconds(expected)
    if name == "strategy":
        return type(trainer.strategy).__name__.lower(), f"{expected}strategy"
    if name == "devices":
        return trainer.num_devices, CPUAccelerator.auto_device_count() if expected == "auto" else expected
    if name == "sync_batchnorm":
        return trainer._accelerator_connector._layer_sync is not None, expected
    return getattr(trainer, name), expected


def _node_objects(built: Built, kind: str, node: dict) -> list[Any]:
    """The built callbacks or trackers of a config node's class (a checkpoint by its file name)."""
    pool = built.trainer.callbacks if kind == "callbacks" else built.trainer.loggers
    found = [o for o in pool if isinstance(o, get_class(node["_target_"]))]
    if len(found) > 1 and "filename" in node:
        found = [o for o in found if o.filename == node["filename"]]
    return found


def _check_node(built: Built, before: Any, key: str, expected: Any) -> None:
    """A ``callbacks.NAME.SETTING`` or ``logger.NAME.SETTING`` key against its built object."""
    kind, name, *rest = key.split(".", 2)
    setting = rest[0] if rest else "_target_"  # the node itself: added, or taken out
    node = (built.config.get(kind) or {}).get(name)
    if node is None:  # the preset takes it out: no object of its class beyond the others' nodes
        gone = before()[kind][name]
        same_class = [
            n for n in (built.config.get(kind) or {}).values() if n and n["_target_"] == gone["_target_"]
        ]
        assert len(_node_objects(built, kind, gone)) == len(same_class), f"{key}: {kind}.{name} still built"
        return
    (obj,) = _node_objects(built, kind, node)
    if setting == "_target_":
        return  # found as an object of that class
    read = SPECIAL.get((type(obj).__name__, setting))
    _assert_same(key, read(obj) if read else _setting(obj, setting), expected)


def _check_scheduler(built: Built, key: str, expected: Any) -> None:
    setting = key.removeprefix("model.scheduler.")
    if key == "model.scheduler":  # an empty node: a constant learning rate
        assert built.scheduler is None and not expected, key
    elif expected is _ABSENT:  # a setting of a schedule the preset replaced or removed
        assert built.scheduler is None or not hasattr(built.scheduler, setting), key
    elif setting == "_target_":
        assert isinstance(built.scheduler, get_class(expected)), key
    else:
        _assert_same(key, getattr(built.scheduler, setting), expected)


def _check(built: Built, before: Any, key: str, expected: Any) -> None:
    """Assert that ``key``'s value in the preset's config is what the built objects hold."""
    head, _, rest = key.partition(".")
    if head in ("callbacks", "logger"):
        _check_node(built, before, key, expected)
    elif key == "model.scheduler" or key.startswith("model.scheduler."):
        _check_scheduler(built, key, expected)
    elif key.startswith("model.optimizer."):
        setting = rest.removeprefix("optimizer.")
        if setting == "_target_":
            assert isinstance(built.optimizer, get_class(expected)), key
        else:
            _assert_same(key, built.optimizer.defaults[setting], expected)
    elif head == "model":
        _assert_same(key, getattr(built.model, rest), expected)
    elif key.startswith("data.augment."):
        _assert_same(key, getattr(built.datamodule.augment, rest.removeprefix("augment.")), expected)
    elif head == "data":
        _assert_same(key, getattr(built.datamodule, rest), expected)
    elif head == "trainer":
        _assert_same(key, *_trainer_setting(built.trainer, rest, expected))
    else:
        raise AssertionError(
            f"{key}: no object reads it here; check it or add it to NOT_ON_AN_OBJECT with why"
        )


def _assert_same(key: str, observed: Any, expected: Any) -> None:
    if isinstance(expected, float) and not isinstance(observed, bool):
        assert math.isclose(float(observed), expected, rel_tol=1e-9, abs_tol=1e-12), (key, observed, expected)
    elif isinstance(expected, list):
        assert list(observed) == expected, (key, observed, expected)
    else:
        assert (str(observed) if isinstance(observed, Path) else observed) == expected, (
            key,
            observed,
            expected,
        )


_ABSENT = object()  # a key the config does not have


@pytest.mark.parametrize(("base", "overrides", "changes"), PRESETS, ids=[",".join(p[1]) for p in PRESETS])
def test_every_changed_key_of_a_preset_reaches_the_built_objects(
    tmp_path, monkeypatch, base, overrides, changes
):
    monkeypatch.chdir(tmp_path)  # the project folder: a tracker's shared store goes to its outputs/
    before = _composed([*base, *COMPARE], tmp_path)
    after = _composed([*overrides, *COMPARE], tmp_path)
    changed = {
        k: after.get(k, _ABSENT)
        for k in before.keys() | after.keys()
        if before.get(k, _ABSENT) != after.get(k, _ABSENT)
    }
    settings = sorted(k for k in changed if not k.startswith(RECORDS))
    # only the group's default option, the recipe itself and callbacks already on change nothing
    assert bool(settings) == changes, f"{overrides} changes {settings or 'nothing'}"
    checked = {k: changed[k] for k in settings if not _excused(k)}
    if not checked:
        return
    built = _built(make_cfg(tmp_path, [*overrides, *COMPARE, *BUILD_HERE]))

    def base_config() -> dict:  # only a preset that takes a callback or tracker out needs it
        return OmegaConf.to_container(make_cfg(tmp_path, [*base, *COMPARE, *BUILD_HERE]), resolve=True)

    for key, value in checked.items():
        _check(built, base_config, key, value)
        if value is not _ABSENT and key.endswith((".save_dir", ".tracking_uri", ".dirpath")):
            assert str(tmp_path) in value, f"{key}={value} writes outside the run directory"
    # what no config may leave out: self-describing checkpoints and an exact resume
    assert {type(c).__name__ for c in built.trainer.callbacks} >= {"CheckpointMetadata", "EpochLRStep"}


def test_every_config_group_has_its_options_covered():
    selected = {o[-1] for _, o, _ in PRESETS}
    # the option folders a user picks from, each with at least one preset here
    for option in (
        "experiment=quickstart",
        "ablation=kermany_cpu/no_ema",
        "data/augment=strong",
        "model/scheduler=none",
        "debug=overfit",
        "callbacks=[default,ema]",
        "ensemble=seeds",
        "logger=mlflow",
        "trainer=ddp",
        "launcher=slurm",
    ):
        assert option in selected
    assert len(PRESETS) >= 40
