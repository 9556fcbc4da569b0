"""Bad settings and bad files, each answered in one line that names the key or the file."""

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from pneumo.artifacts.checkpoint import AtomicCheckpointIO
from pneumo.cli.launch import prepare_launch
from pneumo.cli.predict import main as predict_main
from pneumo.cli.predict import write_predictions
from pneumo.data.datamodule import XrayDataModule
from pneumo.data.dataset import list_films
from pneumo.data.preprocess import BadImageError, preprocessing_spec, read_grey
from pneumo.errors import PneumoError
from pneumo.serving.inference import predict
from pneumo.serving.loading import load_model
from pneumo.training.fit import train
from pneumo.training.settings import config_error
from tests.helpers import FAST, REPO, disk_full, make_cfg, needs_dev_full, run_cli, sample_files, write_dicom

# (override, what the one line must say): each stops before any image is decoded.
BAD_SETTINGS = [
    ("data.batch_size=0", r"data.batch_size=0 is not valid: use a positive number"),
    ("data.batch_size=-1", r"data.batch_size=-1 is not valid"),
    ("data.val_fraction=1.5", r"data.val_fraction=1.5 is not valid: use a fraction above 0 and below 1"),
    ("data.val_fraction=1", r"data.val_fraction=1 is not valid: use a fraction above 0 and below 1, e\.g\."),
    ("data.val_fraction=0", r"data.val_fraction=0 is not valid"),
    ("data.image_size=0", r"data.image_size=0 is not valid: use at least 28 px"),
    ("data.num_workers=-2", r"data.num_workers=-2 is not valid"),
    ("trainer.max_epochs=0", r"trainer.max_epochs=0 is not valid: use 1 or more"),
    ("model.threshold_method=yuden", r"model.threshold_method='yuden' is not valid: use one of youden"),
    ("model.target_sensitivity=1.5", r"model.target_sensitivity=1.5 is not valid"),
    ("data.val_holdout=latest", r"data.val_holdout='latest' is not valid: use one of random, earliest"),
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
    with pytest.raises(PneumoError, match=said) as refused:
        train(make_cfg(tmp_path / "run", [*FAST, f"data.root={tiny_root}"]))
    # the fact, then training's advice, once
    assert str(refused.value).count("remove") == 1 and str(refused.value).count("on_bad_image") == 1
    [row] = predict(load_model(trained_ckpt), [tiny])
    assert row.label == "" and row.error.startswith("1x1 px is smaller than 28 px a side")
    assert "on_bad_image" not in row.error  # a training key means nothing to pneumo-predict


def test_a_zero_byte_file_is_named_so_by_training_and_predict_alike(tmp_path, tiny_root, trained_ckpt):
    empty = tiny_root / "train" / "NORMAL" / "IM-9999-0001.jpeg"
    empty.write_bytes(b"")
    with pytest.raises(PneumoError, match=f"{empty}: zero-byte file; fix, replace or remove the file"):
        train(make_cfg(tmp_path / "run", [*FAST, f"data.root={tiny_root}"]))
    [row] = predict(load_model(trained_ckpt), [empty])
    assert row.error == "zero-byte file"


def test_a_class_folder_with_a_trailing_space_is_quoted(tmp_path, tiny_root):
    (tiny_root / "train" / "NORMAL").rename(tiny_root / "train" / "NORMAL ")
    said = "its name is 'NORMAL ', with a space at an end: rename it to 'NORMAL'"
    with pytest.raises(PneumoError, match=said):
        train(make_cfg(tmp_path / "run", [*FAST, f"data.root={tiny_root}"]))


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
    assert sorted(p.name for p in list_films([normal]).files) == sorted(
        [*[p.name for p in sample_files("NORMAL")], extra.name]
    )


def test_a_broken_link_is_a_bad_image_for_training_and_predict_alike(tmp_path, tiny_root, trained_ckpt):
    link = tiny_root / "train" / "PNEUMONIA" / "person9999_virus_1.jpeg"
    link.symlink_to(tmp_path / "moved_away.jpeg")
    said = f"{link}: broken link to {tmp_path / 'moved_away.jpeg'}"
    with pytest.raises(PneumoError, match=re.escape(said)):
        train(make_cfg(tmp_path / "run", [*FAST, f"data.root={tiny_root}"]))
    rows = predict(load_model(trained_ckpt), list_films([link.parent]).files)
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


@needs_dev_full
def test_a_full_disk_keeps_the_earlier_checkpoint_and_says_so(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, path)
    before = path.read_bytes()
    partial = disk_full(path)
    said = r"no space left on device writing .*last.ckpt: it needs about 0.0 MB"
    with pytest.raises(PneumoError, match=said):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, path)
    assert path.read_bytes() == before and not partial.exists() and not partial.is_symlink()


@needs_dev_full
def test_a_full_disk_leaves_no_partial_predictions(tmp_path, trained_ckpt):
    out = tmp_path / "p.csv"
    partial = disk_full(out)
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
            list_films([locked.parent])
    finally:
        locked.chmod(0o755)


# -- settings that mean nothing: refused before any film is listed or decoded -------------------
# (override, what the one line says); each is checked by pneumo-train before the run starts
BAD_CONFIG_VALUES = [
    ("model.optimizer.lr=-1", r"model.optimizer.lr=-1 is not valid: use a learning rate above 0"),
    ("model.optimizer.lr=nan", r"model.optimizer.lr=nan is not valid"),
    ("model.optimizer.weight_decay=-0.1", r"model.optimizer.weight_decay=-0.1 is not valid"),
    ("model.label_smoothing=abc", r"model.label_smoothing=abc is not valid"),
    ("trainer.precision=8", r"trainer.precision=8 is not valid: use auto, 32-true, bf16-mixed"),
    ("trainer.precision=fp16", r"trainer.precision=fp16 is not valid"),
    ("trainer.max_time=abc", r"trainer.max_time=abc is not valid: use null or a wall time DD:HH:MM:SS"),
    ("trainer.max_epochs=ten", r"trainer.max_epochs=ten is not valid: use 1 or more"),
    ("trainer.devices=0", r"trainer.devices=0 is not valid"),
    ("trainer.limit_val_batches=1.5", r"trainer.limit_val_batches=1.5 is not valid"),
    ("trainer.accelerator=quantum", r"trainer.accelerator=quantum is not valid: use auto, cpu, gpu or mps"),
    ("monitor.mode=up", r"monitor.mode=up is not valid: use min or max"),
]


@pytest.mark.parametrize(("override", "message"), BAD_CONFIG_VALUES, ids=[o for o, _ in BAD_CONFIG_VALUES])
def test_a_config_value_that_means_nothing_is_refused_in_one_line(tmp_path, tiny_root, override, message):
    from pneumo.training.settings import check_train_config

    with pytest.raises(PneumoError, match=message):
        check_train_config(make_cfg(tmp_path / "run", [*FAST, f"data.root={tiny_root}", override]))


def test_valid_settings_pass_the_config_check(tmp_path, tiny_root):
    from pneumo.training.settings import check_train_config

    for extra in ([], ["trainer.precision=auto", "trainer.max_time=00:04:00:00"], ["debug=fast_dev_run"]):
        check_train_config(make_cfg(tmp_path / "run", [*FAST, f"data.root={tiny_root}", *extra]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_run_without_a_gpu_stops_before_the_data(tmp_path, tiny_root, accelerator):
    from pneumo.training.settings import check_train_config

    said = f"trainer.accelerator={accelerator}, but this machine has no GPU PyTorch can use"
    with pytest.raises(PneumoError, match=re.escape(said)):
        overrides = [*FAST, f"data.root={tiny_root}", f"trainer.accelerator={accelerator}"]
        check_train_config(make_cfg(tmp_path / "run", overrides))


# data settings of the wrong type: refused with the others, before the DataModule is built
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.image_size=big", r"data.image_size=big is not valid: use at least 28 px and at most 2048 px"),
        ("data.image_size=100000", r"data.image_size=100000 is not valid"),
        ("data.batch_size=1.5", r"data.batch_size=1.5 is not valid: use a positive number of images"),
        ("data.val_fraction=abc", r"data.val_fraction=abc is not valid"),
        ("data.classes=NORMAL", r"data.classes='NORMAL' is not valid: use a list of the two class folder"),
        ("data.on_bad_image=ignore", r"data.on_bad_image='ignore' is not valid: use skip or fail"),
    ],
)
def test_a_data_setting_of_the_wrong_kind_is_refused_in_one_line(tmp_path, tiny_root, override, message):
    with pytest.raises(PneumoError, match=message):
        train(make_cfg(tmp_path / "run", [*FAST, f"data.root={tiny_root}", override]))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_the_command_refuses_a_bad_value_before_it_reads_any_film(tmp_path, tiny_root):
    # one value in a real process (the exit path); every rule's own line: the tests above
    override = "data.image_size=big"
    result = run_cli("-m", "pneumo.cli.train", *FAST, f"data.root={tiny_root}", override, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {override} is not valid")
    # no folder of Hydra's files only, which would read as a run in outputs/; one the user named stays
    assert list((tmp_path / "outputs" / "train" / "runs").iterdir()) == []
    named = tmp_path / "named"
    again = run_cli(
        "-m", "pneumo.cli.train", *FAST, f"data.root={tiny_root}", override, f"hydra.run.dir={named}"
    )
    assert again.returncode == 2 and (named / "train.log").is_file()


def _weights(tmp_path: Path, kind: str) -> Path:
    import torchvision

    path = tmp_path / f"{kind}.pth"
    if kind == "resnet34":  # more blocks: tensors a ResNet18 does not have
        torch.save(torchvision.models.resnet34().state_dict(), path)
    elif kind == "resnet50":  # bottleneck blocks: the same names, other shapes
        torch.save(torchvision.models.resnet50().state_dict(), path)
    elif kind == "densenet":  # another family: none of a ResNet18's names
        torch.save(torchvision.models.densenet121().state_dict(), path)
    elif kind == "whole_model":  # torch.save(model): pickled objects, not weights
        torch.save(torchvision.models.resnet18(), path)
    else:
        path.write_bytes(b"\x80\x02not a torch file at all" * 10)
    return path


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("resnet34", r"does not fit a ResNet18: it has 80 tensors a ResNet18 does not \(e.g. layer1.2.conv1"),
        ("resnet50", r"does not fit a ResNet18: 23 of its tensors have other shapes \(e.g. "
         r"layer1.0.conv1.weight: 64x64x1x1 in the file, 64x64x3x3 in a ResNet18\)"),
        ("densenet", r"holds none of a ResNet18's layers .*'features.conv0.weight'"),
        ("whole_model", r"holds pickled Python objects \(a whole saved model, not its weights\), which "
         r"pneumo does not unpickle"),
        ("junk", r"is not a PyTorch weights file"),
    ],
)  # fmt: skip
def test_weights_of_another_network_or_a_pickled_model_are_refused(tmp_path, tiny_root, kind, said):
    weights = _weights(tmp_path, kind)
    with pytest.raises(PneumoError, match=said) as refused:
        train(make_cfg(tmp_path / "run", [*FAST, f"data.root={tiny_root}", f"model.weights={weights}"]))
    message = str(refused.value)
    assert "\n" not in message and len(message) < 400  # not torch's size-mismatch dump
    assert "weights_only=False" not in message  # never advice to unpickle
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_eval_without_its_checkpoint_is_one_line(tmp_path):
    result = run_cli("-m", "pneumo.cli.evaluate", f"hydra.run.dir={tmp_path / 'eval'}")
    said = "error: ckpt_path is required: give it on the command line, e.g. ckpt_path=...\n"
    assert result.returncode == 2 and result.stderr == said, result.stderr[-2000:]


def test_a_value_that_cannot_be_resolved_is_one_line_naming_its_key():
    cfg = OmegaConf.create({"ckpt_path": "${nowhere}"})
    with pytest.raises(OmegaConfBaseException) as err:
        cfg.ckpt_path  # noqa: B018  (reading it resolves it, as the command does)
    assert str(config_error(err.value)) == "ckpt_path: Interpolation key 'nowhere' not found"


# -- flags that mean nothing: refused by argparse, one line, exit 2 ------------------------------
def _command(name: str):
    from importlib import import_module

    return import_module(f"pneumo.cli.{name}").main


PREDICT = ["--ckpt", "x.ckpt", "films/"]
BAD_FLAGS = [
    ("predict", [*PREDICT, "--threshold", "1.5"], "--threshold: 1.5 is not a probability: use a number"),
    ("predict", [*PREDICT, "--threshold", "nan"], "--threshold: 'nan' is not a probability: give a finite"),
    ("predict", [*PREDICT, "--threshold", "-0.1"], "--threshold: -0.1 is not a probability"),
    ("predict", [*PREDICT, "--batch-size", "-1"], "--batch-size: -1 is not valid: use a whole number of 1"),
    ("predict", [*PREDICT, "--batch-size", "0"], "--batch-size: 0 is not valid"),
    ("predict", [*PREDICT, "--batch-size", "2.5"], "--batch-size: '2.5' is not a whole number"),
    ("predict", [*PREDICT, "--out", "preds.txt"], "--out: preds.txt: use a .csv or .json file name"),
    ("predict", ["--ckpt", "", "films/"], "--ckpt: an empty value"),
    ("export", ["--ckpt", "x.ckpt", "--format", "tflite"], "--format: invalid choice: 'tflite'"),
    ("data", ["verify", "x", "--classes", "A,A"], "--classes: 'A,A': give distinct names"),
    ("data", ["verify", "x", "--labels", "1"], "--labels: '1': give KEY=VALUE pairs"),
    ("data", ["download", "--source", "medmnist", "--to", "d", "--size", "100"], "--size: invalid choice"),
    ("data", ["import", "t.csv", "--format", "nih", "--to", "m.txt"], "--to: m.txt: use a .csv file name"),
    ("jetson", ["data", "--epochs", "0"], "--epochs: 0 is not valid: use a whole number of 1 or more"),
    ("jetson", ["data", "--workers", "-1"], "-j/--workers: -1 is not valid: use a whole number of 0 or more"),
    ("jetson", ["data", "--lr", "-1"], "--lr/--learning-rate: -1 is not valid: use a number above 0"),
    ("jetson", ["data", "--lr", "inf"], "--lr/--learning-rate: 'inf' is not a number: give a finite number"),
    ("jetson", ["data", "--resolution", "8"], "--resolution: 8 is not valid: use at least 28 px"),
    ("jetson", ["data", "-b", "0"], "-b/--batch-size: 0 is not valid"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "argv", "said"), BAD_FLAGS, ids=[" ".join(a) for _, a, _ in BAD_FLAGS])
def test_a_flag_that_means_nothing_is_refused_by_its_type(tmp_path, capsys, monkeypatch, command, argv, said):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        _command(command)(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    [line] = err.splitlines()
    prog = {"data": "pneumo-data", "jetson": "pneumo-jetson-train"}.get(command, f"pneumo-{command}")
    assert line.startswith(f"error: {prog}") and f"argument {said}" in line, line


@pytest.mark.slow
def test_a_bad_flag_in_a_real_process_is_one_line_and_status_2(tmp_path):
    result = run_cli("-m", "pneumo.cli.predict", "--ckpt", "x.ckpt", str(tmp_path), "--threshold", "1.5")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: pneumo-predict: argument --threshold: 1.5 is not a probability: use a number from 0 to 1, "
        "e.g. 0.5 (see pneumo-predict --help)"
    ]
    script = run_cli(str(REPO / "scripts" / "train.py"), str(tmp_path), "--batch-size", "0")
    assert script.returncode == 2 and len(script.stderr.splitlines()) == 1
    assert "argument -b/--batch-size: 0 is not valid" in script.stderr


# -- every write error in one line, nothing partial left -----------------------------------------
def test_destinations_that_cannot_be_written_are_refused_before_any_work(tmp_path, capsys, trained_ckpt):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    a_folder = tmp_path / "preds.csv"
    a_folder.mkdir()
    cases = [
        ("predict", ["--ckpt", str(trained_ckpt), str(tmp_path), "--out", str(a_file / "p.csv")],
         f"cannot write {a_file / 'p.csv'}: {a_file} is a file, not a folder"),
        ("predict", ["--ckpt", str(trained_ckpt), str(tmp_path), "--out", str(a_folder)],
         f"cannot write {a_folder}: it is a folder; give a file name"),
        ("predict", ["--ckpt", str(trained_ckpt), str(tmp_path), "--cam", str(a_file)],
         f"cannot write into {a_file}: it is a file, not a folder"),
        ("export", ["--ckpt", str(trained_ckpt), "--out", str(a_file)],
         f"cannot write into {a_file}: it is a file, not a folder"),
        ("export", ["--ckpt", str(trained_ckpt), "--out", str(a_file / "exported")],
         f"{a_file} is a file, not a folder"),
        ("ensemble", [str(trained_ckpt), str(trained_ckpt), "--out", str(tmp_path)],
         f"cannot write {tmp_path}: it is a folder; give a file name"),
        ("data", ["import", str(a_file), "--format", "nih", "--to", str(a_file / "m.csv")],
         f"{a_file} is a file, not a folder"),
        ("data", ["convert", str(a_file), "--to", str(a_file)], f"cannot write into {a_file}: it is a file"),
        ("jetson", [str(tmp_path), f"--model-dir={a_file}"], f"cannot write into {a_file}: it is a file"),
    ]  # fmt: skip
    for command, args, said in cases:
        with pytest.raises(SystemExit) as stop:
            _command(command)(args)
        [line] = capsys.readouterr().err.splitlines()
        assert stop.value.code == 2 and said in line, (command, line)
    assert a_file.read_text() == "x" and not list(a_folder.iterdir())


@pytest.mark.parametrize(
    "run_dir",
    [lambda f: f / "run", lambda f: f],
    ids=["under a file", "a file"],
)
def test_a_run_directory_that_cannot_be_made_is_one_line(tmp_path, run_dir):
    a_file = tmp_path / "runs"
    a_file.write_text("x")
    said = r"cannot write into hydra.run.dir=.*(runs: it|runs) is a file, not a folder"
    with pytest.raises(PneumoError, match=said):
        prepare_launch([f"hydra.run.dir={run_dir(a_file)}"])


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (PermissionError(13, "Permission denied"), "permission denied (a read-only folder or file system)"),
        (OSError(30, "Read-only file system"), "permission denied (a read-only folder or file system)"),
        (IsADirectoryError(21, "Is a directory"), "it is a folder; give a file name"),
    ],
    ids=["permission", "read-only file system", "a folder in the way"],
)
def test_a_write_that_fails_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, trained_ckpt, error, said):
    """Whatever stops the final rename (a read-only place, a folder appearing at the path): one line
    naming the file, no partial file, and the earlier file kept."""
    out = tmp_path / "p.csv"
    out.write_text("earlier\n")

    def refuse(src, dst):
        raise error

    monkeypatch.setattr(os, "replace", refuse)
    rows = predict(load_model(trained_ckpt), sample_files("NORMAL")[:1])
    with pytest.raises(PneumoError, match=re.escape(f"cannot write {out}: {said}")):
        write_predictions(rows, out)
    assert out.read_text() == "earlier\n" and sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]
    monkeypatch.undo()
    with pytest.raises(PneumoError, match=r"cannot write .*last.ckpt: .*p.csv is a file, not a folder"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1)}, tmp_path / "p.csv" / "last.ckpt")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_destination_is_refused_for_every_command(tmp_path, capsys, trained_ckpt):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for command, args in (
            ("predict", ["--ckpt", str(trained_ckpt), str(tmp_path), "--out", str(locked / "p.csv")]),
            ("export", ["--ckpt", str(trained_ckpt), "--out", str(locked / "exported")]),
            ("ensemble", [str(trained_ckpt), str(trained_ckpt), "--out", str(locked / "e.ckpt")]),
        ):
            with pytest.raises(SystemExit):
                _command(command)(args)
            assert f"{locked} is read-only for you (permission denied)" in capsys.readouterr().err
        with pytest.raises(PneumoError, match="read-only for you"):
            prepare_launch([f"hydra.run.dir={locked / 'run'}"])
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o755)


# -- the original command line takes any path the shell can pass --------------------------------
ODD_NAMES = ["with space", "a=b", "a,b", "café 中文", "it's", "[x]", "${oops}", "back\\slash", "-dash"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_the_jetson_command_line_quotes_any_path_for_hydra(name):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from pneumo.cli.jetson import overrides_for, parse_args

    data, model_dir = f"/data/{name}/chest_xray", f"models/{name}"
    args, extra = parse_args([data, f"--model-dir={model_dir}", f"--resume={model_dir}/last.ckpt"])
    parser = OverridesParser.create()
    read = {}
    for override in parser.parse_overrides(overrides_for(args)):
        read[override.key_or_group] = OmegaConf.create({"v": override.value()}).v  # resolved as Hydra does
    assert read["data.root"] == data and read["hydra.run.dir"] == model_dir
    assert read["ckpt_path"] == f"{model_dir}/last.ckpt"
    prepare_launch(overrides_for(args)[:-1])  # pneumo-train's own check reads them as given
