"""A run stopped before its schedule finished, said by the command: one line on stderr (and in
train.log) with what stopped it, what was saved and the command that resumes it, and an exit
status that tells a finished run from a stopped one."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from pathlib import Path
from typing import Any

from pneumo.callbacks.run_outcome import RunOutcome, Stop, drop_requeue_copies
from pneumo.cli.overrides import hydra_quote, quoted_command


def _path_value(path: str) -> str:
    """A path as an override value: as it is where Hydra reads it back unchanged, else quoted."""
    return path if "/" in path and re.fullmatch(r"[A-Za-z0-9_./-]+", path) else hydra_quote(path)


def stop_message(stop: Stop, resume_args: list[str], max_time: Any = None, prog: str = "pneumo-train") -> str:
    """The one line for a run stopped short: what stopped it, after how many epochs, what was
    saved, and the command that resumes it (``resume_args``: the run's own overrides;
    ``max_time``: the ``trainer.max_time`` setting as the user gave it)."""
    head = f"{stop.describe(max_time)}, before the schedule finished"
    if stop.checkpoint is None:
        return f"{head}; no checkpoint was written yet: run the command again"
    by_time = stop.signal is None
    skipped = ("ckpt_path=", "hydra.run.dir=", *(("trainer.max_time=",) if by_time else ()))
    args = [a for a in resume_args if not a.lstrip("+").startswith(skipped)]
    if by_time:  # the elapsed time is restored with the run: the same limit would stop it at once
        args.append("trainer.max_time=null")
    args += [f"ckpt_path={_path_value(stop.checkpoint)}", f"hydra.run.dir={_path_value(stop.run_dir)}"]
    command = quoted_command(prog, args)
    if stop.requeued:
        return (
            f"{head}; saved {stop.checkpoint}; SLURM requeues the job (slurm.requeue=true) and it "
            f"resumes from there; by hand: {command}"
        )
    tail = " (trainer.max_time counts the whole run, resumes included)" if by_time else ""
    return f"{head}; resume with: {command}{tail}"


def _to_log_files(message: str) -> None:
    """Add ``message`` to the run's log files (train.log) only: the console has it already."""
    record = logging.LogRecord(__name__, logging.WARNING, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def end_run(
    outcome: RunOutcome,
    run_dir: str | Path,
    resume_args: list[str],
    max_time: Any = None,
    in_sweep: bool = False,
) -> None:
    """After ``fit``: nothing when the schedule finished; else say so once, in one line on
    stderr (and in train.log), and exit with the stop's status (``Stop.exit_status``).

    A job of an in-process sweep that ``trainer.max_time`` stopped only says so: the sweep's
    other jobs still run.
    """
    stop = outcome.stop(run_dir)
    if stop is None:
        return
    message = stop_message(stop, resume_args, max_time)
    if outcome.rank_zero:
        drop_requeue_copies(stop)
        # the log first: after SIGHUP the terminal is gone, and writing to it fails (EIO)
        _to_log_files(message)
        with contextlib.suppress(OSError):
            print(message, file=sys.stderr, flush=True)
    if in_sweep and stop.signal is None:
        return
    raise SystemExit(stop.exit_status)
