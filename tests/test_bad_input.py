"""Bad settings and bad files, each answered in one line that names the key or the file."""

import math
from pathlib import Path

import pytest
from PIL import Image

from pneumo.checkpoint import load_model
from pneumo.data.datamodule import XrayDataModule
from pneumo.data.preprocess import preprocessing_spec, read_grey
from pneumo.errors import PneumoError
from pneumo.inference import predict
from pneumo.train import train
from tests.conftest import FAST, make_cfg, sample_files

# (override, what the one line must say): each stops before any image is decoded.
BAD_SETTINGS = [
    ("data.batch_size=0", r"data.batch_size=0 is not valid: use a positive number"),
    ("data.batch_size=-1", r"data.batch_size=-1 is not valid"),
    ("data.val_fraction=1.5", r"data.val_fraction=1.5 is not valid: use a fraction between 0 and 1"),
    ("data.val_fraction=0", r"data.val_fraction=0 is not valid"),
    ("data.image_size=0", r"data.image_size=0 is not valid: use at least 28 px"),
    ("data.num_workers=-2", r"data.num_workers=-2 is not valid"),
    ("trainer.max_epochs=0", r"trainer.max_epochs=0 is not valid: use 1 or more"),
    ("model.threshold_method=yuden", r"model.threshold_method='yuden' is not valid: use one of youden"),
    ("model.target_sensitivity=1.5", r"model.target_sensitivity=1.5 is not valid"),
    ("data.val_holdout=latest", r"data.val_holdout must be one of random, earliest"),
    ("data.positive_class=COVID", r"data.positive_class='COVID'.*one of which is the positive class"),
]


@pytest.mark.parametrize(("override", "message"), BAD_SETTINGS, ids=[o for o, _ in BAD_SETTINGS])
def test_bad_setting_stops_in_one_line_before_reading_data(tmp_path, tiny_root, override, message):
    cfg = make_cfg(tmp_path / "run", [*FAST, f"data.root={tiny_root}", override])
    with pytest.raises(PneumoError, match=message):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_data_root_that_is_a_file_is_called_a_file(tmp_path):
    a_file = tmp_path / "train.zip"
    a_file.write_bytes(b"PK")
    with pytest.raises(PneumoError, match=r"data.root=.*train.zip is a file, not a folder"):
        train(make_cfg(tmp_path / "run", [*FAST, f"data.root={a_file}"]))


def _plant_tiny(folder: Path) -> Path:
    tiny = folder / "IM-9999-0001.png"
    Image.new("L", (1, 1), 128).save(tiny)
    return tiny


def test_a_one_pixel_image_is_refused_by_training_and_predict_alike(tmp_path, tiny_root, trained_ckpt):
    tiny = _plant_tiny(tiny_root / "train" / "NORMAL")
    said = f"{tiny}: 1x1 px is smaller than 28 px a side"
    with pytest.raises(PneumoError, match=said):
        train(make_cfg(tmp_path / "run", [*FAST, f"data.root={tiny_root}"]))
    [row] = predict(load_model(trained_ckpt), [tiny])
    assert row.label == "" and row.error.startswith("1x1 px is smaller than 28 px a side")


def test_a_last_training_batch_of_one_image_is_left_out(tmp_path, tiny_root):
    # one more NORMAL patient, so that the training split is no multiple of the batch size
    extra = sample_files("NORMAL")[0]
    (tiny_root / "train" / "NORMAL" / "IM-9998-0001.jpeg").write_bytes(extra.read_bytes())
    overrides = [*FAST, f"data.root={tiny_root}", "trainer.max_epochs=1"]
    datamodule = XrayDataModule(str(tiny_root), image_size=32, batch_size=4, val_fraction=0.25)
    datamodule.setup("fit")
    n = len(datamodule.train_set)
    batch = n - 1 if n % 4 != 1 else 4  # a batch size that leaves exactly one image over
    assert n % batch == 1
    results = train(make_cfg(tmp_path / "run", [*overrides, f"data.batch_size={batch}"]))
    assert math.isfinite(results["train/loss"])  # trained through every batch without a crash


def test_exif_orientation_is_applied_by_the_one_decode_path(tmp_path):
    film = Image.open(sample_files("NORMAL")[0]).convert("L").resize((224, 160))  # stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "IM-9997-0001.jpeg"
    film.save(path, exif=exif)
    assert read_grey(path).size == (160, 224)  # upright, as a viewer shows it
    assert "exif_transpose" in preprocessing_spec(64)["decode"]["exif_orientation"]
