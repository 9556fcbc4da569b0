"""Every preset composes and instantiates: DataModule, LightningModule and Trainer, without training;
the evaluation config's defaults, run as pneumo-eval runs them."""

import json

import pytest
from omegaconf import OmegaConf

from pneumo.cli.train import build
from tests.helpers import REPO, SAMPLE, make_cfg


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


# No download and no GPU here: the presets are checked for composition and wiring only.
OFFLINE_CPU = [f"data.root={SAMPLE}", "model.weights=null", "trainer.accelerator=cpu"]

PRESETS = (
    [[f"experiment={name}"] for name in _names("experiment")]
    + [["experiment=kermany_cpu", f"ablation={name}"] for name in _names("ablation") if name != "ema"]
    # a switch for any experiment; kermany_cpu averages its weights already
    + [["ablation=ema"]]
    + [[f"debug={name}"] for name in _names("debug")]
    + [[f"data/augment={name}"] for name in _names("data/augment")]
    + [[f"model/scheduler={name}"] for name in _names("model/scheduler")]
)


def _flat(node, prefix: str = "") -> dict:
    """A resolved config as ``{dotted.key: value}``."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict = {}
    for key, value in node.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _changes(tmp_path, overrides: list[str]) -> dict:
    """What ``overrides`` change against the config they build on (an ablation: its recipe)."""
    base = overrides[:-1]
    configs = [
        make_cfg(tmp_path / name, [*o, *OFFLINE_CPU]) for name, o in (("base", base), ("preset", overrides))
    ]
    before, after = (_flat(OmegaConf.to_container(c, resolve=True)) for c in configs)
    ignored = ("paths.", "task_name")
    keys = (before.keys() | after.keys()) - {k for k in before.keys() | after.keys() if k.startswith(ignored)}
    return {k: after.get(k) for k in keys if before.get(k, "absent") != after.get(k, "absent")}


@pytest.mark.parametrize("overrides", PRESETS, ids=lambda o: ",".join(o))
def test_preset_changes_what_it_says_and_reaches_the_objects(tmp_path, overrides):
    changed = _changes(tmp_path, overrides)
    # the recipe as it is (the reference row of a sweep) and each group's default change nothing
    if overrides[-1] not in ("ablation=recipe", "data/augment=default", "model/scheduler=plateau"):
        assert changed, f"{overrides} changes nothing"
    datamodule, model, trainer = build(make_cfg(tmp_path / "run", [*overrides, *OFFLINE_CPU]))
    # every data and model key the preset sets arrives in the object built from it
    for key, value in changed.items():
        group, _, name = key.partition(".")
        if group == "data" and "." not in name and hasattr(datamodule, name):
            assert getattr(datamodule, name) == value, key
        if group == "model" and name in model.hparams:
            assert model.hparams[name] == value, key
        if group == "trainer" and name == "max_epochs":
            assert trainer.max_epochs == value
    # what no config may leave out: self-describing checkpoints and an exact resume
    assert {type(c).__name__ for c in trainer.callbacks} >= {"CheckpointMetadata", "EpochLRStep"}


def test_eval_defaults_evaluate_the_test_split_without_tta(tmp_path, tiny_root, trained_ckpt):
    from pneumo.cli.evaluate import main as eval_main

    # composed as pneumo-eval composes it, given only the checkpoint and the data root
    cfg = make_cfg(tmp_path, [f"ckpt_path={trained_ckpt}", f"data.root={tiny_root}"], config_name="eval")
    auroc = eval_main(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["n"] == 16  # tiny_root/test, not the validation split
    assert saved["tta"] is False and saved["auroc"] == auroc
