"""data.on_bad_image=skip must not leave a class without images in training or validation."""

import pytest

from pneumo.data.datamodule import XrayDataModule
from pneumo.errors import PneumoError
from pneumo.training.fit import train
from tests.helpers import FAST, make_cfg


def _plant_bad(paths) -> int:
    """Overwrite real films with text under their .jpeg names; return how many."""
    paths = list(paths)
    for path in paths:
        path.write_text("not an X-ray")
    return len(paths)


def test_skipping_every_normal_film_stops_the_run(tmp_path, tiny_root):
    train_normal = [
        s for s in XrayDataModule(str(tiny_root), val_fraction=0.25).split_samples()[0] if s.label == 0
    ]
    _plant_bad((tiny_root / "train" / "NORMAL").glob("*.jpeg"))
    overrides = [*FAST, f"data.root={tiny_root}", "data.on_bad_image=skip"]
    with pytest.raises(
        PneumoError, match=rf"no NORMAL images left in the training split: .* all {len(train_normal)} "
    ):
        train(make_cfg(tmp_path, overrides))
    assert not (tmp_path / "checkpoints").exists()


def test_skipping_the_validation_films_of_a_class_stops_setup(tiny_root):
    datamodule = XrayDataModule(str(tiny_root), image_size=32, val_fraction=0.25, on_bad_image="skip")
    validation = datamodule.split_samples()[1]
    bad = _plant_bad(s.path for s in validation if s.label == 1)
    with pytest.raises(
        PneumoError, match=rf"no PNEUMONIA images left in the validation split: .* all {bad} "
    ):
        datamodule.setup("fit")


def test_skipping_some_films_of_a_class_still_trains(tiny_root):
    datamodule = XrayDataModule(str(tiny_root), image_size=32, val_fraction=0.25, on_bad_image="skip")
    train_samples = datamodule.split_samples()[0]
    _plant_bad([next(s.path for s in train_samples if s.label == 0)])
    datamodule.setup("fit")
    assert len(datamodule.train_set) == len(train_samples) - 1
    assert datamodule.train_set.skipped and set(datamodule.train_set.labels) == {0, 1}
