"""Getting the data: the Kaggle archive or PneumoniaMNIST, laid out as DIR/split/class."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pneumo.errors import PneumoError

KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
MEDMNIST_SIZES = (28, 64, 128, 224)
CLASSES = ("NORMAL", "PNEUMONIA")  # PneumoniaMNIST: label 0 normal, 1 pneumonia


def _offline(source: str, err: Exception) -> PneumoError:
    return PneumoError(
        f"could not download {source} ({type(err).__name__}: {err}); this needs network access. "
        "Download it on a connected machine and copy DIR/train, DIR/val, DIR/test here"
    )


def convert_medmnist_npz(npz_path: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Write a MedMNIST ``.npz`` (``train_images``, ``train_labels``, ...) as PNG folders.

    Returns the number of images written per split.
    """
    npz_path, out_dir = Path(npz_path), Path(out_dir)
    try:
        arrays = np.load(npz_path)
    except Exception as err:
        raise PneumoError(f"{npz_path} is not a readable .npz file ({err})") from err
    written: dict[str, int] = {}
    for split in ("train", "val", "test"):
        if f"{split}_images" not in arrays:
            continue
        if f"{split}_labels" not in arrays:
            raise PneumoError(f"{npz_path} has {split}_images but no {split}_labels")
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(-1)
        if len(images) != len(labels):
            raise PneumoError(f"{npz_path}: {len(images)} {split} images but {len(labels)} labels")
        for name in CLASSES:
            (out_dir / split / name).mkdir(parents=True, exist_ok=True)
        for index, (image, label) in enumerate(zip(images, labels)):
            if int(label) not in (0, 1):
                raise PneumoError(f"{npz_path}: {split}_labels[{index}] = {label}, expected 0 or 1")
            target = out_dir / split / CLASSES[int(label)] / f"{split}_{index:05d}.png"
            Image.fromarray(np.asarray(image, dtype=np.uint8)).save(target)
        written[split] = len(images)
    if not written:
        raise PneumoError(f"{npz_path} has no train_images/val_images/test_images arrays (MedMNIST format)")
    return written


def download_medmnist(out_dir: str | Path, size: int = 128) -> dict[str, int]:
    """Fetch PneumoniaMNIST at ``size`` px through the ``medmnist`` package and lay it out."""
    if size not in MEDMNIST_SIZES:
        raise PneumoError(f"--size must be one of {MEDMNIST_SIZES}, got {size}")
    try:
        from medmnist import PneumoniaMNIST
    except ImportError as err:
        raise PneumoError("downloading PneumoniaMNIST needs medmnist: pip install medmnist") from err
    cache = Path(out_dir) / ".medmnist"
    cache.mkdir(parents=True, exist_ok=True)
    try:
        PneumoniaMNIST(split="train", download=True, root=str(cache), size=size)
    except Exception as err:
        raise _offline("PneumoniaMNIST", err) from err
    npz = next(cache.glob("pneumoniamnist*.npz"))
    return convert_medmnist_npz(npz, out_dir)


def download_kaggle(out_dir: str | Path) -> dict[str, int]:
    """Fetch the Kaggle archive through ``kagglehub`` and copy its train/val/test folders."""
    try:
        import kagglehub
    except ImportError as err:
        raise PneumoError("downloading from Kaggle needs kagglehub: pip install kagglehub") from err
    try:
        archive = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as err:
        raise _offline(f"the Kaggle dataset {KAGGLE_DATASET}", err) from err
    # The archive holds chest_xray/{train,val,test} and a nested copy of itself: take the first.
    source = next((p.parent for p in sorted(archive.rglob("train")) if (p / "NORMAL").is_dir()), None)
    if source is None:
        raise PneumoError(f"{archive} does not hold train/NORMAL; the Kaggle archive layout changed")
    written = {}
    for split in ("train", "val", "test"):
        if (source / split).is_dir():
            shutil.copytree(source / split, Path(out_dir) / split, dirs_exist_ok=True)
            written[split] = sum(1 for p in (Path(out_dir) / split).rglob("*.jpeg"))
    return written
