"""Every preset composes and instantiates: DataModule, LightningModule and Trainer, without training;
the evaluation config's defaults, run as pneumo-eval runs them."""

import json

import lightning as L
import pytest

from pneumo.cli.train import build
from pneumo.data.datamodule import XrayDataModule
from pneumo.model.module import XrayClassifier
from tests.conftest import REPO, SAMPLE, make_cfg


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


# No download and no GPU here: the presets are checked for composition and wiring only.
OFFLINE_CPU = [f"data.root={SAMPLE}", "model.weights=null", "trainer.accelerator=cpu"]

PRESETS = (
    [[f"experiment={name}"] for name in _names("experiment")]
    + [["experiment=kermany_cpu", f"ablation={name}"] for name in _names("ablation")]
    + [[f"debug={name}"] for name in _names("debug")]
    + [[f"data/augment={name}"] for name in _names("data/augment")]
    + [[f"model/scheduler={name}"] for name in _names("model/scheduler")]
)


@pytest.mark.parametrize("overrides", PRESETS, ids=lambda o: ",".join(o))
def test_preset_instantiates_datamodule_module_and_trainer(tmp_path, overrides):
    cfg = make_cfg(tmp_path, [*overrides, *OFFLINE_CPU])
    datamodule, model, trainer = build(cfg)
    assert isinstance(datamodule, XrayDataModule) and isinstance(model, XrayClassifier)
    assert isinstance(trainer, L.Trainer)
    assert datamodule.image_size == cfg.data.image_size
    assert trainer.max_epochs == cfg.trainer.max_epochs or cfg.trainer.get("fast_dev_run")
    optimizers = model.configure_optimizers()
    optimizer = optimizers["optimizer"] if isinstance(optimizers, dict) else optimizers
    assert optimizer.defaults["lr"] == cfg.model.optimizer.lr


def test_eval_defaults_evaluate_the_test_split_without_tta(tmp_path, tiny_root, trained_ckpt):
    from pneumo.cli.evaluate import main as eval_main

    # composed as pneumo-eval composes it, given only the checkpoint and the data root
    cfg = make_cfg(tmp_path, [f"ckpt_path={trained_ckpt}", f"data.root={tiny_root}"], config_name="eval")
    auroc = eval_main(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["n"] == 16  # tiny_root/test, not the validation split
    assert saved["tta"] is False and saved["auroc"] == auroc
