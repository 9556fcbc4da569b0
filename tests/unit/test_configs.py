"""Config groups beyond one preset at a time (each preset's changed keys against the built objects:
test_presets.py): the callbacks' files, overrides of them, trainer presets on this machine, local
settings, the search config; the evaluation config's defaults, run as pneumo-eval runs them."""

import json
import shutil
import subprocess

import lightning as L
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pneumo.training.build import build
from tests.helpers import REPO, SAMPLE, make_cfg


def _names(group: str) -> list[str]:
    """A group's options, those in a sub-folder as FOLDER/NAME (ablation=kermany_cpu/no_ema)."""
    folder = REPO / "conf" / group
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))


# No download and no GPU here: the presets are built on the bundled sample, on the CPU.
OFFLINE_CPU = [f"data.root={SAMPLE}", "model.weights=null", "trainer.accelerator=cpu"]


def test_eval_defaults_evaluate_the_test_split_without_tta(tmp_path, tiny_root, trained_ckpt):
    from pneumo.cli.evaluate import main as eval_main

    # composed as pneumo-eval composes it, given only the checkpoint and the data root
    cfg = make_cfg(tmp_path, [f"ckpt_path={trained_ckpt}", f"data.root={tiny_root}"], config_name="eval")
    auroc = eval_main(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["n"] == 16  # tiny_root/test, not the validation split
    assert saved["tta"] is False and saved["auroc"] == auroc


# The callbacks of a run, in the order Lightning calls them: one file each in conf/callbacks/
CALLBACKS = [
    "model_checkpoint",
    "last_checkpoint",
    "early_stopping",
    "weight_averaging",
    "lr_monitor",
    "save_on_interrupt",
    "epoch_report",
    "progress_bar",
]


def test_callback_files_compose_into_the_same_keys_and_build_their_callbacks(tmp_path):
    default = make_cfg(tmp_path / "default", [])
    assert list(default.callbacks) == CALLBACKS
    assert default.callbacks.weight_averaging is None  # off unless an experiment turns it on
    averaged = make_cfg(tmp_path / "ema", ["ablation=ema"])
    assert list(averaged.callbacks) == CALLBACKS
    files = [name for name in _names("callbacks") if name != "default"]
    for name in files:
        (key,) = OmegaConf.load(REPO / "conf" / "callbacks" / f"{name}.yaml")  # one callback a file
        assert isinstance(instantiate(averaged.callbacks[key]), L.Callback), name
    assert {k for k in CALLBACKS if k != "weight_averaging"} <= set(files)


def test_callback_overrides_keep_working(tmp_path):
    recipe = make_cfg(tmp_path / "recipe", ["experiment=kermany_cpu"])
    assert recipe.callbacks.weight_averaging == {
        "_target_": "lightning.pytorch.callbacks.EMAWeightAveraging",
        "decay": 0.998,
    }
    overrides = [
        "experiment=kermany_cpu",
        "callbacks.early_stopping.patience=3",
        "callbacks.progress_bar=null",
        "callbacks.weight_averaging=null",
    ]
    changed = make_cfg(tmp_path / "changed", overrides)
    assert changed.callbacks.early_stopping.patience == 3
    assert changed.callbacks.progress_bar is None and changed.callbacks.weight_averaging is None
    assert (
        make_cfg(tmp_path / "no_ema", ["experiment=kermany_cpu", "ablation=kermany_cpu/no_ema"]).callbacks[
            "weight_averaging"
        ]
        is None
    )


@pytest.mark.parametrize("name", _names("trainer"))
def test_each_trainer_preset_composes_and_builds(tmp_path, name):
    composed = make_cfg(tmp_path / "composed", [f"trainer={name}"])
    assert composed.trainer.accelerator == {"cpu": "cpu", "gpu": "gpu"}.get(name, "auto")
    assert composed.trainer.max_epochs == 35  # every preset builds on default.yaml
    # no GPU here: built on the CPU (a GPU preset's accelerator overridden)
    _, _, trainer = build(make_cfg(tmp_path / "run", [f"trainer={name}", *OFFLINE_CPU]))
    assert type(trainer.accelerator).__name__ == "CPUAccelerator"
    if name == "ddp":
        assert type(trainer.strategy).__name__ == "DDPStrategy"


def test_experiments_pin_their_trainer(tmp_path):
    assert make_cfg(tmp_path / "gpu", ["experiment=kermany"]).trainer.accelerator == "gpu"
    assert make_cfg(tmp_path / "cpu", ["experiment=kermany_cpu"]).trainer.accelerator == "cpu"


def test_the_search_config_is_train_plus_the_search_space(tmp_path):
    train = OmegaConf.to_container(make_cfg(tmp_path / "train", []))
    search = OmegaConf.to_container(make_cfg(tmp_path / "search", [], config_name="search"))
    assert "search" not in train
    assert search.pop("search")["params"]  # conf/hparams_search/default.yaml
    assert search.pop("monitor") == {"metric": "val/auroc", "mode": "max"}
    train.pop("monitor")
    assert search == train  # everything else as pneumo-train composes it


def _local_settings(folder, text: str) -> str:
    """A conf/local/default.yaml of its own in ``folder``; the override that adds it to Hydra's path."""
    (folder / "local").mkdir(parents=True)
    (folder / "local" / "default.yaml").write_text(text)
    return f"hydra.searchpath=[file://{folder}]"


def test_local_settings_apply_last_when_present(tmp_path):
    path = _local_settings(
        tmp_path / "conf", f"# @package _global_\ndata:\n  root: {SAMPLE}\n  batch_size: 7\n"
    )
    local = make_cfg(tmp_path / "local", [path, "experiment=quickstart"])
    assert local.data.batch_size == 7  # over the experiment's 4
    datamodule, _, _ = build(local)
    assert datamodule.batch_size == 7 and str(datamodule.root) == str(SAMPLE)
    assert (
        make_cfg(tmp_path / "cli", [path, "data.batch_size=5"]).data.batch_size == 5
    )  # the command line wins
    assert make_cfg(tmp_path / "off", [path, "~local"]).data.batch_size == 32


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_git_ignores_local_settings():
    ignored = subprocess.run(["git", "check-ignore", "-q", "conf/local/default.yaml"], cwd=REPO)
    assert ignored.returncode == 0
