"""Bad files, crashes, interrupted runs and unsafe inputs: each with its exact outcome."""

import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from pneumo.data.preprocess import BadImageError, load_image
from pneumo.data.sources import convert_medmnist_npz
from pneumo.data.verify import verify
from pneumo.errors import PneumoError
from pneumo.training.fit import train
from tests.helpers import (
    FAST,
    SAMPLE,
    make_cfg,
    run_cli,
    sample_files,
    scalars,
    start_training,
    verify_command,
    wait_for_checkpoint,
)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(path: Path, side: int = 100_000) -> Path:
    """A valid PNG header declaring side x side pixels, with almost no data."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    path.write_bytes(png)
    return path


def broken_crc_png(path: Path) -> Path:
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[29] ^= 0xFF  # last byte of the IHDR chunk's CRC
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def messy_root(tiny_root: Path) -> Path:
    """tiny_root with every kind of trouble the public archive and downloads bring."""
    normal, pneumonia = tiny_root / "train" / "NORMAL", tiny_root / "train" / "PNEUMONIA"
    good = sample_files("NORMAL")[0].read_bytes()
    (normal / "truncated.jpeg").write_bytes(good[: len(good) // 3])
    (normal / "empty.jpeg").write_bytes(b"")
    (normal / "text.jpeg").write_text("this is not a picture")
    broken_crc_png(normal / "crc.png")
    huge_png(normal / "bomb.png")
    Image.new("L", (1, 1)).save(pneumonia / "tiny.png")
    (normal / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tiny_root / "test" / "PNEUMONIA" / "person1946_bacteria_4874.jpeg").unlink()
    return tiny_root


def test_verify_reports_each_problem(messy_root):
    report = verify(messy_root)
    reasons = {Path(b["path"]).name: b["reason"] for b in report.bad_files}
    assert reasons.keys() == {"truncated.jpeg", "empty.jpeg", "text.jpeg", "crc.png", "bomb.png", "tiny.png"}
    assert reasons["empty.jpeg"] == "zero-byte file"
    assert "truncated" in reasons["truncated.jpeg"]
    assert "not a readable image" in reasons["text.jpeg"]
    assert "too large" in reasons["bomb.png"]
    assert "1x1 px is smaller than 28 px a side" in reasons["tiny.png"]  # the rule training applies
    assert report.counts["train"] == {"NORMAL": 8, "PNEUMONIA": 8}
    assert report.counts["test"] == {"NORMAL": 8, "PNEUMONIA": 7}
    # tiny_root's test/ repeats train/: every file is a cross-split duplicate, every patient leaks
    assert len(report.duplicates_across) == 15
    assert "person1947" in report.patients_across and "normal2-im-1427" in report.patients_across
    assert any(p.endswith(".DS_Store") for p in report.ignored_files)
    assert report.errors and not report.as_dict()["ok"]


def test_verify_clean_data_exits_zero_with_json(capsys):
    status, out = verify_command(capsys, str(SAMPLE), "--json")
    report = json.loads(out)
    assert status == 0 and report["ok"] and report["counts"] == {"train": {"NORMAL": 8, "PNEUMONIA": 8}}
    assert report["modes"] == {"L": 16}
    assert report["ignored_files"] == [str(SAMPLE / "README.md")]  # beside the class folders


def test_verify_messy_data_exits_nonzero(messy_root, capsys):
    status, out = verify_command(capsys, str(messy_root))
    assert status == 1
    assert "truncated.jpeg" in out and "patient in several splits" in out


def test_decompression_bomb_is_refused(tmp_path):
    with pytest.raises(BadImageError, match=r"bomb\.png: declared size is too large"):
        load_image(huge_png(tmp_path / "bomb.png"), 64)


def test_medmnist_npz_is_laid_out_as_folders(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    written = convert_medmnist_npz(tmp_path / "pneumoniamnist.npz", tmp_path / "out")
    assert written == {"train": 6, "val": 2, "test": 3}
    assert len(list((tmp_path / "out" / "train" / "PNEUMONIA").glob("*.png"))) == 3
    image = np.asarray(Image.open(tmp_path / "out" / "train" / "NORMAL" / "train_00000.png"))
    assert np.array_equal(image, arrays["train_images"][0])
    np.savez(tmp_path / "wrong.npz", images=arrays["train_images"])
    with pytest.raises(PneumoError, match="MedMNIST format"):
        convert_medmnist_npz(tmp_path / "wrong.npz", tmp_path / "out2")


@pytest.mark.slow
def test_download_without_the_package_or_network_is_one_line(tmp_path):
    result = run_cli("-m", "pneumo.cli.data", "download", "--source", "medmnist", "--to", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # without the package, or with it but no network: either says what to do, nothing else does
    assert re.fullmatch(
        r"error: (downloading PneumoniaMNIST needs medmnist: pip install medmnist"
        r"|could not download PneumoniaMNIST \(.*\); this needs network access\. Download it on a "
        r"connected machine and copy DIR/train, DIR/val, DIR/test here)",
        result.stderr.strip(),
    ), result.stderr


def test_bad_image_met_during_training_is_skipped_or_fails(tmp_path, tiny_root):
    bad = tiny_root / "train" / "PNEUMONIA" / "person9_bacteria_1.jpeg"
    bad.write_bytes(sample_files("PNEUMONIA")[0].read_bytes()[:500])
    lazy = [*FAST, f"data.root={tiny_root}", "data.cache=false", "trainer.max_epochs=1"]
    train(make_cfg(tmp_path / "skip", [*lazy, "data.on_bad_image=skip"]))
    assert (tmp_path / "skip" / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(BadImageError, match=r"person9_bacteria_1\.jpeg"):
        train(make_cfg(tmp_path / "fail", [*lazy, "data.on_bad_image=fail"]))


class Diverge(L.Callback):
    """Turn the weights to NaN at the start of epoch 2, as a runaway learning rate would."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.net.fc.weight.fill_(float("nan"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_root):
    overrides = [
        *FAST,
        f"data.root={tiny_root}",
        "trainer.max_epochs=3",
        "+callbacks.diverge._target_=tests.run.test_robustness.Diverge",
    ]
    with pytest.raises(PneumoError, match=r"training loss became nan at epoch 1.*model.optimizer.lr"):
        train(make_cfg(tmp_path, overrides))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path):
    killed = tmp_path / "killed"
    process = start_training(killed, "trainer.max_epochs=5", merge_output=True)
    wait_for_checkpoint(killed, process, epoch=1)
    process.kill()  # SIGKILL: no chance to save anything
    process.wait()
    resumed = run_cli(
        "-m",
        "pneumo.cli.train",
        *FAST,
        f"data.root={SAMPLE}",
        "trainer.max_epochs=5",
        f"hydra.run.dir={killed}",
        f"ckpt_path={killed}/checkpoints/last.ckpt",
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 4, resumed.stderr[
        -3000:
    ]
    straight = tmp_path / "straight"
    train(make_cfg(straight, [*FAST, f"data.root={SAMPLE}", "trainer.max_epochs=5"]))
    assert scalars(killed)["val/loss"][-1] == pytest.approx(scalars(straight)["val/loss"][-1], abs=1e-6)


@pytest.mark.slow
def test_runs_started_together_get_their_own_directories(tmp_path):
    args = [sys.executable, "-m", "pneumo.cli.train", *FAST, f"data.root={SAMPLE}", "debug=fast_dev_run"]
    processes = [
        subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]
    assert [p.wait() for p in processes] == [0, 0]
    assert len(list((tmp_path / "outputs" / "train" / "runs").iterdir())) == 2
    sweep = run_cli(
        "-m",
        "pneumo.cli.train",
        "-m",
        *FAST,
        f"data.root={SAMPLE}",
        "debug=fast_dev_run",
        "seed=1,2,3",
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert len([p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]) == 3
