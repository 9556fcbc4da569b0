import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from pneumo.cli.predict import main as predict_main
from pneumo.data.dataset import list_films
from pneumo.errors import PneumoError
from pneumo.serving.inference import predict
from pneumo.serving.loading import load_model
from tests.helpers import SAMPLE, SHARED_VAL16, run_cli, sample_files


def _val16():
    return SHARED_VAL16 if SHARED_VAL16.is_dir() else SAMPLE


@pytest.mark.slow
def test_predicts_sixteen_full_resolution_xrays(tmp_path, trained_ckpt):
    out = tmp_path / "preds.csv"
    result = run_cli(
        "-m", "pneumo.cli.predict", "--ckpt", str(trained_ckpt), str(_val16()), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 16
    # the operating point the run stored, read from the checkpoint itself, decides every label
    stored = torch.load(trained_ckpt, weights_only=True)["pneumo"]["threshold"]
    # the same films scored in this process, through the library
    in_process = {
        str(r.path): r.p_positive for r in predict(load_model(trained_ckpt), list_films([_val16()]).files)
    }
    for row in rows:
        p = float(row["p_pneumonia"])
        assert p == pytest.approx(in_process[row["path"]], abs=1e-5), row["path"]
        assert float(row["threshold"]) == pytest.approx(stored, abs=1e-6)
        assert row["label"] == ("PNEUMONIA" if p >= stored else "NORMAL"), row


@pytest.mark.slow
def test_bad_files_get_error_rows_and_a_nonzero_exit(tmp_path, trained_ckpt):
    good = sample_files("NORMAL")[:2]
    truncated = tmp_path / "truncated.jpeg"
    truncated.write_bytes(good[0].read_bytes()[:2000])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    out = tmp_path / "preds.json"
    args = [str(p) for p in (*good, truncated, text, tmp_path / "missing.jpeg")]
    result = run_cli("-m", "pneumo.cli.predict", "--ckpt", str(trained_ckpt), *args, "--out", str(out))
    assert result.returncode == 1
    rows = {r["path"]: r for r in json.loads(out.read_text())}
    assert len(rows) == 5
    assert all(rows[str(p)]["label"] for p in good)
    assert "truncated" in rows[str(truncated)]["error"]
    assert "not a readable image" in rows[str(text)]["error"]
    assert "not found" in rows[str(tmp_path / "missing.jpeg")]["error"]


def test_in_process_prediction_respects_threshold_override(trained_ckpt):
    model = load_model(trained_ckpt)
    files = list_films([SAMPLE]).files
    assert len(files) == 16
    assert {r.label for r in predict(model, files, threshold=0.0)} == {"PNEUMONIA"}
    assert {r.label for r in predict(model, files, threshold=1.01)} == {"NORMAL"}


def test_test_time_augmentation_averages_views_of_each_image_alone(trained_ckpt):
    model = load_model(trained_ckpt)
    files = sample_files("NORMAL")[:3] + sample_files("PNEUMONIA")[:2]
    plain = [r.p_positive for r in predict(model, files, batch_size=5)]
    batched = [r.p_positive for r in predict(model, files, batch_size=5, tta=True)]
    # batch composition must not matter: each image's views are averaged with its own only
    alone = [r.p_positive for r in predict(model, files, batch_size=1, tta=True)]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert batched != pytest.approx(plain, abs=1e-4)
    assert all(0.0 <= p <= 1.0 for p in batched)


def test_grad_cam_overlays_have_the_image_size(tmp_path, trained_ckpt):
    from pneumo.serving.cam import write_cams

    files = sample_files("PNEUMONIA")[:2]
    written = write_cams(load_model(trained_ckpt), files, tmp_path)
    assert len(written) == 2
    jet = colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3]
    for source, cam in zip(files, written):
        assert Image.open(cam).size == Image.open(source).size
        # the overlay is 0.6 film + 0.4 heatmap colour: take the film out, and what is left
        # must be jet colours that vary over the image (a blank map leaves one colour everywhere)
        film = np.asarray(Image.open(source).convert("RGB"), dtype=np.float64) / 255
        colour = (np.asarray(Image.open(cam), dtype=np.float64) / 255 - 0.6 * film) / 0.4
        nearest = np.min(np.linalg.norm(colour.reshape(-1, 1, 3)[::97] - jet[None], axis=-1), axis=1)
        assert np.quantile(nearest, 0.99) < 0.05, "the overlay is not the film under jet colours"
        assert colour.reshape(-1, 3).std(axis=0).sum() > 0.1, "the heatmap is the same everywhere"


class NotPlainData:
    """A custom object: pickling it into a checkpoint makes the file unsafe to load."""


def test_foreign_corrupt_and_unsafe_checkpoints_are_refused(tmp_path, trained_ckpt):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(PneumoError, match="not a pneumo checkpoint"):
        load_model(foreign)
    hostile_pickle = tmp_path / "hostile.ckpt"
    hostile_pickle.write_bytes(pickle.dumps(NotPlainData()))
    for name, payload in {
        "corrupt": trained_ckpt.read_bytes()[:5000],
        "random": os.urandom(4000),
        "empty": b"",
        "hostile": hostile_pickle.read_bytes(),
    }.items():
        bad = tmp_path / f"{name}.ckpt"
        bad.write_bytes(payload)
        with pytest.raises(PneumoError, match="not a PyTorch checkpoint .* refused without reading") as err:
            load_model(bad)
        assert "weights_only" not in str(err.value)
    unsafe = tmp_path / "unsafe.ckpt"
    checkpoint = torch.load(trained_ckpt, weights_only=True)
    checkpoint["extra"] = NotPlainData()
    torch.save(checkpoint, unsafe)
    with pytest.raises(PneumoError, match="pickled Python objects or code that pneumo refuses") as err:
        load_model(unsafe)
    assert "weights_only" not in str(err.value)


def test_terminal_table_names_every_file_of_a_deep_folder_in_full(tmp_path, trained_ckpt, capsys):
    deep = tmp_path / ("a_rather_long_folder_name_" * 4) / "and_deeper" / "still"
    deep.mkdir(parents=True)
    for path in sample_files("NORMAL")[:3]:
        (deep / path.name).write_bytes(path.read_bytes())
    predict_main(["--ckpt", str(trained_ckpt), str(deep)])
    out = capsys.readouterr().out
    for path in sample_files("NORMAL")[:3]:
        assert path.name in out.replace("\n", "").replace("│", "").replace(" ", "")
