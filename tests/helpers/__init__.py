"""What tests share: tiny datasets, fast run settings, readers of TensorBoard, CSV and W&B logs."""

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
from tests.helpers.tensorboard import scalar_steps, scalars
from tests.helpers.trackers import csv_rows, wandb_run

__all__ = [
    "FAST",
    "REPO",
    "SAMPLE",
    "SHARED_DATA",
    "SHARED_TRAIN",
    "SHARED_VAL16",
    "csv_rows",
    "fit_until_interrupted",
    "make_cfg",
    "make_tiny_root",
    "needs_shared",
    "run_cli",
    "sample_files",
    "scalar_steps",
    "scalars",
    "wandb_run",
    "write_dicom",
]
