"""Training in a child process that a test stops: started with the default signal dispositions,
polled until it has written a checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers.data import REPO, SAMPLE
from tests.helpers.runs import FAST


def default_signals() -> None:
    """Run in the child before it starts: Ctrl-C and SIGTERM act as in a terminal's foreground
    job. A shell starts a background job (``nohup pytest ... &``) with SIGINT ignored, children
    inherit that, and Python then never turns Ctrl-C into KeyboardInterrupt."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def start_training(
    run_dir: Path, *overrides: str, env: dict[str, str] | None = None, merge_output: bool = False
) -> subprocess.Popen:
    """``pneumo-train`` on the bundled sample with the fast settings, writing into ``run_dir``;
    its output as text (stderr into stdout when ``merge_output``)."""
    args = [*FAST, f"data.root={SAMPLE}", f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.Popen(
        [sys.executable, "-m", "pneumo.cli.train", *args],
        cwd=REPO,
        env=env or {**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    )


def wait_for_checkpoint(
    run_dir: Path, process: subprocess.Popen, epoch: int = 0, timeout: float = 240
) -> None:
    """Until the run's last.ckpt holds ``epoch`` or a later one: training is under way, its
    signal handlers set. Fails with the child's last output if it ends or the time runs out."""
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if last.is_file():
            try:
                if torch.load(last, weights_only=True)["epoch"] >= epoch:
                    return
            except Exception:  # being renamed into place right now
                pass
        time.sleep(0.2)
    out, err = process.communicate(timeout=60) if process.poll() is not None else ("", "")
    raise AssertionError(f"no checkpoint of epoch {epoch} appeared: {(err or out or '')[-2000:]}")
