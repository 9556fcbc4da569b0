"""model.mixup_alpha: training batches are blended by the seeded draws, validation never is."""

import lightning as L
import numpy as np
import pytest
import torch

from pneumo.errors import PneumoError
from pneumo.model.mixup import mix_batch
from pneumo.model.module import XrayClassifier
from pneumo.training.build import build
from pneumo.training.settings import check_train_config
from tests.helpers import FAST, SAMPLE, make_cfg

RUN = [*FAST, f"data.root={SAMPLE}", "callbacks.early_stopping=null", "trainer.max_epochs=1"]


def fitted(tmp_path, alpha: float) -> tuple[XrayClassifier, L.Trainer]:
    """A one-epoch real run on the bundled films with ``model.mixup_alpha=alpha``, seeded as
    ``pneumo-train`` seeds it."""
    cfg = make_cfg(tmp_path / f"alpha_{alpha}", [*RUN, f"model.mixup_alpha={alpha}"])
    L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    return model, trainer


def validation_loss(tmp_path, alpha: float, state: dict, class_weights: torch.Tensor) -> float:
    """val/loss of the weights ``state`` in a model built with ``model.mixup_alpha=alpha``."""
    cfg = make_cfg(tmp_path / f"val_{alpha}", [*RUN, f"model.mixup_alpha={alpha}"])
    datamodule, model, trainer = build(cfg)
    model.load_state_dict(state)
    model.class_weights = class_weights
    return trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/loss"]


def test_mixup_trains_other_weights_and_leaves_validation_alone(tmp_path):
    mixed, trainer = fitted(tmp_path, 0.4)
    plain, _ = fitted(tmp_path, 0.0)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not torch.equal(mixed.net.conv1.weight, plain.net.conv1.weight)

    state, weights = mixed.state_dict(), mixed.class_weights
    assert validation_loss(tmp_path, 0.4, state, weights) == validation_loss(tmp_path, 0.0, state, weights)


def test_negative_alpha_is_refused_naming_the_key(tmp_path):
    with pytest.raises(PneumoError, match=r"^model.mixup_alpha=-1 is not valid: use 0 \(off\) or more$"):
        check_train_config(make_cfg(tmp_path, [*FAST, "model.mixup_alpha=-1"]))


def test_mixed_batch_blends_each_image_with_its_shuffled_partner():
    images = torch.randn(6, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    targets = torch.tensor([0, 1, 1, 0, 1, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as under trainer.precision=bf16-mixed
        mixed, mix = mix_batch(images, targets, 0.4, np.random.default_rng([42, 3, 7]))
    again = np.random.default_rng([42, 3, 7])  # the same draws again: lam first, then the shuffle
    lam = float(again.beta(0.4, 0.4))
    perm = torch.from_numpy(again.permutation(6))
    assert mix.lam == lam and torch.equal(mix.targets_a, targets)
    assert torch.equal(mix.targets_b, targets[perm])
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[perm])
    assert mixed.dtype == torch.float32 and mixed.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(mix.major, targets if lam >= 0.5 else targets[perm])

    untouched, none = mix_batch(images, targets, 0.0, again)
    assert untouched is images and none is None
