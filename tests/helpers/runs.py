"""Running pneumo in tests: small fast settings, composed configs, child processes, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

from pneumo.training.config import compose_config
from tests.helpers.data import REPO

# Small and fast: 32 px images, scratch weights, no progress bar.
FAST = [
    "model.weights=null",
    "data.image_size=32",
    "data.batch_size=4",
    "data.val_fraction=0.25",
    "callbacks.progress_bar=null",
    "trainer.log_every_n_steps=1",
    "trainer.max_epochs=2",
    # the figures tests compare do not depend on the machine's bfloat16 units
    "trainer.precision=32-true",
]


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
