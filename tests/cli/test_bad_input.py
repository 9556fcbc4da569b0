"""Bad settings and bad files, each answered in one line that names the key or the file."""

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumo.artifacts.checkpoint import AtomicCheckpointIO
from pneumo.artifacts.rundir import prepare_launch
from pneumo.cli.predict import main as predict_main
from pneumo.cli.predict import write_predictions
from pneumo.cli.train import train
from pneumo.data.datamodule import XrayDataModule
from pneumo.data.preprocess import BadImageError, preprocessing_spec, read_grey
from pneumo.errors import PneumoError
from pneumo.model.inference import collect_images, predict
from pneumo.model.loading import load_model
from tests.helpers import FAST, make_cfg, run_cli, sample_files, write_dicom

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


def test_a_link_to_a_folder_is_followed_once_even_when_it_loops(tmp_path, tiny_root, trained_ckpt):
    normal = tiny_root / "train" / "NORMAL"
    (normal / "again").symlink_to(normal, target_is_directory=True)  # a loop: NORMAL/again/again/...
    elsewhere = tmp_path / "more"
    elsewhere.mkdir()
    extra = elsewhere / "IM-9996-0001.jpeg"
    extra.write_bytes(sample_files("NORMAL")[0].read_bytes())
    (normal / "linked").symlink_to(elsewhere, target_is_directory=True)
    train_files, val_files = XrayDataModule(str(tiny_root), image_size=32, val_fraction=0.25).split_samples()
    names = sorted(s.path.name for s in train_files + val_files)
    assert names.count(extra.name) == 1 and len(names) == 17  # the 16 films once, the linked one once
    assert sorted(p.name for p in collect_images([normal])) == sorted(
        [*[p.name for p in sample_files("NORMAL")], extra.name]
    )


def test_a_broken_link_is_a_bad_image_for_training_and_predict_alike(tmp_path, tiny_root, trained_ckpt):
    link = tiny_root / "train" / "PNEUMONIA" / "person9999_virus_1.jpeg"
    link.symlink_to(tmp_path / "moved_away.jpeg")
    said = f"{link}: broken link to {tmp_path / 'moved_away.jpeg'}"
    with pytest.raises(PneumoError, match=re.escape(said)):
        train(make_cfg(tmp_path / "run", [*FAST, f"data.root={tiny_root}"]))
    rows = predict(load_model(trained_ckpt), collect_images([link.parent]))
    [bad] = [r for r in rows if r.error]
    assert bad.path == str(link) and bad.error.startswith("broken link to")


def _non_utf8_copy(folder: Path) -> Path:
    """A real film saved under a name that is not valid UTF-8 (Latin-1 'é', as old shares write)."""
    name = os.fsdecode(b"IM-9995-caf\xe9.jpeg")
    path = folder / name
    path.write_bytes(sample_files("NORMAL")[1].read_bytes())
    return path


def test_a_file_name_that_is_not_utf8_is_written_whole(tmp_path, trained_ckpt):
    folder = tmp_path / "films"
    folder.mkdir()
    for film in sample_files("PNEUMONIA")[:2]:
        (folder / film.name).write_bytes(film.read_bytes())
    odd = _non_utf8_copy(folder)
    out = tmp_path / "p.csv"
    predict_main(["--ckpt", str(trained_ckpt), str(folder), "--out", str(out)])
    lines = out.read_bytes().splitlines()
    assert len(lines) == 4 and any(os.fsencode(odd) in line for line in lines)  # the name's own bytes
    predict_main(["--ckpt", str(trained_ckpt), str(folder), "--out", str(tmp_path / "p.json")])
    rows = json.loads((tmp_path / "p.json").read_text())
    assert str(odd) in [r["path"] for r in rows]
    # the terminal table, in a real process with a UTF-8 terminal
    shown = run_cli("-m", "pneumo.cli.predict", "--ckpt", str(trained_ckpt), str(folder))
    assert shown.returncode == 0 and "Traceback" not in shown.stderr
    assert "IM-9995-caf\\xe9.jpeg" in shown.stdout


def test_a_bad_file_with_a_name_that_is_not_utf8_is_named_printably(tmp_path, tiny_root, caplog):
    odd = _non_utf8_copy(tiny_root / "train" / "NORMAL")
    odd.write_bytes(b"not an image")
    with pytest.raises(PneumoError) as stopped:
        train(make_cfg(tmp_path / "run", [*FAST, f"data.root={tiny_root}"]))
    message = str(stopped.value)
    assert "IM-9995-caf\\xe9.jpeg" in message
    message.encode("utf-8")  # a log file or terminal can take it
    assert any("IM-9995-caf\\xe9.jpeg" in r.getMessage() for r in caplog.records)  # no patient ID
    for record in caplog.records:
        record.getMessage().encode("utf-8")


def _disk_full(path: Path) -> Path:
    """Make the next write of ``path`` hit a full disk: its temporary file is /dev/full."""
    partial = path.with_name(f".{path.name}.partial")
    partial.symlink_to("/dev/full")
    return partial


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_keeps_the_earlier_checkpoint_and_says_so(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, path)
    before = path.read_bytes()
    partial = _disk_full(path)
    said = r"no space left on device writing .*last.ckpt: it needs about 0.0 MB"
    with pytest.raises(PneumoError, match=said):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, path)
    assert path.read_bytes() == before and not partial.exists() and not partial.is_symlink()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_leaves_no_partial_predictions(tmp_path, trained_ckpt):
    out = tmp_path / "p.csv"
    partial = _disk_full(out)
    with pytest.raises(PneumoError, match=r"no space left on device writing .*p.csv"):
        write_predictions(predict(load_model(trained_ckpt), sample_files("NORMAL")[:2]), out)
    assert not out.exists() and not partial.is_symlink()


RAMP = np.tile(np.linspace(0, 4095, 64), (64, 1))  # raw values, dark left to bright right


def test_dicom_applies_the_modality_lut_before_the_window(tmp_path):
    pytest.importorskip("pydicom")
    # stored 0..4095 mean -2048..2047 after rescaling; the window 900..1100 is in those units,
    # so only the brightest quarter of the ramp is white (windowing raw values would whiten 3/4)
    lut = {"RescaleSlope": 1, "RescaleIntercept": -2048, "WindowCenter": 1000, "WindowWidth": 200}
    white = (np.asarray(read_grey(write_dicom(tmp_path / "film.dcm", RAMP, **lut))) > 200).mean()
    assert 0.15 < white < 0.3
    # and an exported model's preprocessing.json tells a deployment the same order
    dicom = preprocessing_spec(64)["decode"]["dicom"]
    assert dicom.index("apply_modality_lut") < dicom.index("apply_voi_lut")


@pytest.mark.parametrize(
    ("pixels", "tags", "said"),
    [
        (np.stack([RAMP, RAMP]), {"NumberOfFrames": 2}, r"a DICOM with 2 frames; pneumo reads single-frame"),
        (RAMP, {"Rows": 30000, "Columns": 30000}, r"declared size 30000x30000 is too large"),
        (RAMP[:8, :8], {}, r"8x8 px is smaller than 28 px a side"),
    ],
    ids=["multi-frame", "huge declared size", "tiny"],
)
def test_dicom_is_checked_before_its_pixels_are_decoded(tmp_path, pixels, tags, said):
    pytest.importorskip("pydicom")
    path = write_dicom(tmp_path / "film.dcm", pixels)
    if tags:  # rewrite the header only, as a damaged or hostile file would
        import pydicom

        ds = pydicom.dcmread(path)
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(path)
    with pytest.raises(BadImageError, match=said):
        read_grey(path)


def test_an_unquoted_equals_sign_names_the_key_and_the_quoting(tmp_path):
    said = r"""override 'data.root=/data/a=b' \(key data.root\).*'data.root="/data/a=b"'"""
    with pytest.raises(PneumoError, match=said):
        prepare_launch(["data.root=/data/a=b", "trainer.max_epochs=1"])
    prepare_launch(['data.root="/data/a=b"', "trainer.max_epochs=1"])  # quoted, it is read


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders without permission")
def test_a_folder_predict_cannot_read_stops_it_in_one_line(tmp_path):
    locked = tmp_path / "films" / "ward_b"
    locked.mkdir(parents=True)
    for film in sample_files("NORMAL")[:2]:
        (locked.parent / film.name).write_bytes(film.read_bytes())
        (locked / film.name).write_bytes(film.read_bytes())
    locked.chmod(0)
    try:
        said = f"cannot read folder {re.escape(str(locked))}: permission denied"
        with pytest.raises(PneumoError, match=said):
            collect_images([locked.parent])
    finally:
        locked.chmod(0o755)
