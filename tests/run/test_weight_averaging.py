"""Weight averaging (ablation=ema): the averaged weights are the ones validated, kept and used."""

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from pneumo.model.module import XrayClassifier
from pneumo.model.network import resnet18_classifier
from pneumo.serving.inference import predict
from pneumo.serving.loading import load_model
from pneumo.training.build import build
from pneumo.training.fit import train
from tests.helpers import FAST, fit_until_interrupted, make_cfg

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
    assert torch.allclose(torch.tensor([r.p_positive for r in rows]), logged.float(), atol=1e-5)


def test_validation_keeps_the_runs_class_weights():
    # the averaged copy is made before on_fit_start sets the class weights, and a resumed
    # average would only drift towards them: they must not be averaged nor swapped in
    model = XrayClassifier(resnet18_classifier())
    callback = EMAWeightAveraging(decay=0.998)
    callback.setup(None, model, "fit")
    weights = torch.tensor([2.0, 0.667])
    model.class_weights = weights.clone()  # as on_fit_start sets them
    callback.on_validation_epoch_start(None, model)
    assert torch.equal(model.class_weights, weights)


class _InterruptValidation(L.Callback):
    """Ctrl-C in the middle of the second epoch's validation; notes both sets of weights then."""

    def __init__(self) -> None:
        self.seen: dict[str, torch.Tensor] = {}

    def on_validation_batch_end(self, trainer, pl_module, *args, **kwargs):
        if trainer.current_epoch == 1 and not trainer.sanity_checking:
            (averaging,) = (c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging))
            # swapped for validation: the model holds the average, the callback the raw weights
            self.seen["averaged"] = pl_module.net.conv1.weight.detach().clone()
            self.seen["raw"] = averaging._average_model.module.net.conv1.weight.detach().clone()
            raise KeyboardInterrupt


def test_interrupted_validation_saves_averaged_and_raw_weights_in_their_places(tmp_path, tiny_root):
    cfg = make_cfg(tmp_path / "run", [*FAST, f"data.root={tiny_root}", "data.image_size=48", *EMA])
    L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg, [interrupt := _InterruptValidation()])
    fit_until_interrupted(trainer, model, datamodule)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert torch.equal(saved["state_dict"]["net.conv1.weight"], interrupt.seen["averaged"])
    assert torch.equal(saved["current_model_state"]["net.conv1.weight"], interrupt.seen["raw"])
    assert not torch.equal(interrupt.seen["averaged"], interrupt.seen["raw"])
