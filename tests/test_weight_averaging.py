"""Weight averaging (ablation=ema): the averaged weights are the ones validated, kept and used."""

import lightning as L
import torch

from pneumo.checkpoint import load_model
from pneumo.inference import predict
from pneumo.train import build, train
from tests.conftest import FAST, make_cfg

# a short memory, so that a few steps leave the average far from the last step's weights
EMA = ["ablation=ema", "callbacks.weight_averaging.decay=0.5", "trainer.max_epochs=3"]


def test_best_checkpoint_holds_the_averaged_weights_that_validation_scored(tmp_path, tiny_root):
    overrides = [*FAST, f"data.root={tiny_root}", "data.image_size=48", *EMA]
    train(make_cfg(tmp_path / "run", overrides))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    saved = torch.load(best, weights_only=True)
    averaged, raw = saved["state_dict"], saved["current_model_state"]
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged if k.endswith("weight"))

    # validating the file again gives the val/loss that made it the best epoch: training
    # scored the averaged weights, not the last step's
    datamodule, model, _ = build(make_cfg(tmp_path / "again", overrides))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (figures,) = trainer.validate(model, datamodule=datamodule, ckpt_path=best, weights_only=True)
    (best_score,) = (
        v["best_model_score"]
        for k, v in saved["callbacks"].items()
        if k.startswith("ModelCheckpoint{'monitor': 'val/loss'")
    )
    assert figures["val/loss"] == best_score.item()

    # and prediction (so evaluation and export, which load the same way) uses those weights
    logged, _ = model.val_predictions
    rows = predict(load_model(best), [s.path for s in datamodule.val_set.samples])
    assert torch.allclose(torch.tensor([r.p_pneumonia for r in rows]), logged.float(), atol=1e-5)
