"""What tests share: tiny datasets, fast run settings, a TensorBoard reader."""

from tests.helpers.data import (
    REPO,
    SAMPLE,
    SHARED_DATA,
    SHARED_TRAIN,
    SHARED_VAL16,
    make_tiny_root,
    needs_shared,
    sample_files,
    write_dicom,
)
from tests.helpers.runs import FAST, fit_until_interrupted, make_cfg, run_cli
from tests.helpers.tensorboard import scalars

__all__ = [
    "FAST",
    "REPO",
    "SAMPLE",
    "SHARED_DATA",
    "SHARED_TRAIN",
    "SHARED_VAL16",
    "fit_until_interrupted",
    "make_cfg",
    "make_tiny_root",
    "needs_shared",
    "run_cli",
    "sample_files",
    "scalars",
    "write_dicom",
]
