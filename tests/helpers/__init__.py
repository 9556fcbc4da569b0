"""What tests share: tiny datasets, fast run settings, training children a test stops, CSV tables,
a full disk, free ports, the scripts as modules, readers of TensorBoard, CSV and W&B logs."""

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
from tests.helpers.files import (
    disk_full,
    free_port,
    load_script,
    needs_dev_full,
    verify_command,
    write_csv,
)
from tests.helpers.processes import default_signals, start_training, wait_for_checkpoint
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
    "default_signals",
    "disk_full",
    "free_port",
    "load_script",
    "fit_until_interrupted",
    "make_cfg",
    "make_tiny_root",
    "needs_dev_full",
    "needs_shared",
    "run_cli",
    "sample_files",
    "scalar_steps",
    "scalars",
    "start_training",
    "verify_command",
    "wait_for_checkpoint",
    "wandb_run",
    "write_csv",
    "write_dicom",
]
