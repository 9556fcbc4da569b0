"""Training's validation and pneumo-predict see the same pixels and read the same output column."""

import lightning as L
import pytest
import torch

from pneumo.serving.inference import predict
from pneumo.serving.loading import load_model
from pneumo.training.build import build
from pneumo.training.fit import train
from tests.helpers import FAST, make_cfg


@pytest.mark.parametrize(
    ("classes", "positive"),
    [
        ("[NORMAL,PNEUMONIA]", "PNEUMONIA"),
        ("[PNEUMONIA,NORMAL]", "PNEUMONIA"),  # reversed order: still P(PNEUMONIA)
        ("[NORMAL,PNEUMONIA]", "NORMAL"),  # another positive class, named
    ],
)
def test_validation_probabilities_equal_predict_on_the_same_files(tmp_path, tiny_root, classes, positive):
    overrides = [
        *FAST,
        f"data.root={tiny_root}",
        f"data.classes={classes}",
        f"data.positive_class={positive}",
        "data.image_size=48",
    ]
    train(make_cfg(tmp_path / "run", overrides))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"

    datamodule, model, _ = build(make_cfg(tmp_path / "again", overrides))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(model, datamodule=datamodule, ckpt_path=best, weights_only=True)
    logged, is_positive = model.val_predictions

    loaded = load_model(best)
    samples = datamodule.val_set.samples
    rows = predict(loaded, [s.path for s in samples])
    assert len(rows) == len(logged) > 0
    predicted = torch.tensor([r.p_positive for r in rows], dtype=torch.float64)
    assert torch.allclose(predicted, logged.double(), atol=1e-5)
    # and the same side of the stored threshold for every film, folded BatchNorm and all
    assert [r.p_positive >= loaded.threshold for r in rows] == (logged >= loaded.threshold).tolist()
    # P(positive class) and its labels, wherever the class sits in data.classes
    assert loaded.meta.positive_class == positive
    assert is_positive.tolist() == [int(s.path.parent.name == positive) for s in samples]
    assert all((r.label == positive) == (r.p_positive >= loaded.threshold) for r in rows)
