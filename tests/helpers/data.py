"""Tiny real-image datasets for tests: the bundled sample, copied or written into folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_TRAIN = SHARED_DATA / "chest_xray" / "train"
SHARED_VAL16 = SHARED_DATA / "kaggle_val16"

needs_shared = pytest.mark.skipif(not SHARED_TRAIN.is_dir(), reason="../shared/data is not present")


def sample_files(label: str) -> list[Path]:
    """The bundled real X-rays of one class (8 each)."""
    return sorted((SAMPLE / label).glob("*.jpeg"))


def make_tiny_root(root: Path) -> Path:
    """ROOT/train/{NORMAL,PNEUMONIA} with the 16 bundled X-rays, plus test/ with the same."""
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
