"""Shared fixtures: tiny real-image datasets, composed configs, one trained checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

# One intra-op thread, here and in every child process: 32 px batches of 4 gain nothing from
# more, and on a busy machine threads wait on each other (a 2-epoch run on the sample: 4 s with
# one thread, 23 s with two while another training ran on the same 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pneumo.cli.train import compose_config

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_TRAIN = SHARED_DATA / "chest_xray" / "train"
SHARED_VAL16 = SHARED_DATA / "kaggle_val16"

needs_shared = pytest.mark.skipif(not SHARED_TRAIN.is_dir(), reason="../shared/data is not present")

# Small and fast: 32 px images, scratch weights, no progress bar.
FAST = [
    "model.weights=null",
    "data.image_size=32",
    "data.batch_size=4",
    "data.val_fraction=0.25",
    "callbacks.progress_bar=null",
    "trainer.log_every_n_steps=1",
    "trainer.max_epochs=2",
]


def sample_files(label: str) -> list[Path]:
    """The bundled real X-rays of one class (8 each)."""
    return sorted((SAMPLE / label).glob("*.jpeg"))


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """DATA_ROOT/train/{NORMAL,PNEUMONIA} with the 16 bundled X-rays, plus test/ with the same."""
    root = tmp_path / "xray"
    for split in ("train", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            target = root / split / label
            target.mkdir(parents=True)
            for path in sample_files(label):
                shutil.copy(path, target / path.name)
    return root


def write_dicom(path: Path, pixels, **tags) -> Path:
    """A real DICOM file (MONOCHROME2, 12 bits stored in 16) holding ``pixels``; ``tags`` add or
    override header fields (``PhotometricInterpretation``, ``WindowCenter``, ``RescaleSlope``, ...)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.asarray(pixels).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def make_cfg(output_dir: Path, overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose a config as the entry point would, with its run directory at ``output_dir``."""
    return compose_config(overrides, output_dir, config_name)


def fit_until_interrupted(trainer, model, datamodule) -> None:
    """Fit until a callback raises KeyboardInterrupt, as Ctrl-C would, and Lightning exits."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C
            trainer.fit(model, datamodule=datamodule)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C from then on


def run_cli(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a command-line entry point in a fresh interpreter, capturing its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short real training run on the bundled sample; its best.ckpt."""
    from pneumo.cli.train import train

    out = tmp_path_factory.mktemp("run")
    cfg = make_cfg(out, [*FAST, f"data.root={SAMPLE}", "data.image_size=64", "trainer.max_epochs=3"])
    train(cfg)
    return out / "checkpoints" / "best.ckpt"
