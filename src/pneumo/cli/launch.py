"""pneumo-train's command line, read and completed before Hydra writes anything.

A resume (``ckpt_path=RUN/checkpoints/X.ckpt``) continues in its run directory, a process of
a multi-process run shares rank zero's, a SLURM job started again resumes its run, and an
override Hydra cannot parse or a run directory that cannot be written is refused in one line
(``pneumo.cli.overrides``). The run directory itself and its lock are ``pneumo.artifacts.rundir``'s.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

from pneumo.artifacts.rundir import RESUMABLE, check_run_dir, checkpoint_run_dir, launch_rank
from pneumo.cli.overrides import (
    NO_JOB_FLAGS,
    check_launch_dir,
    check_overrides,
    hydra_quote,
    literal_overrides,
)
from pneumo.errors import PneumoError

# What a process other than rank zero adds to its command line (the last value of a key
# wins): rank zero alone records the run, so no .hydra/ and no log file; warnings and errors
# still reach its console.
_FOLLOWER_OVERRIDES = (
    "hydra.output_subdir=null",
    "hydra/job_logging=stdout",
    "hydra.job_logging.root.level=WARNING",
)


def prepare_launch(args: list[str]) -> list[str]:
    """Complete and check pneumo-train's command line before Hydra writes anything.

    A resume (``ckpt_path=RUN/checkpoints/X.ckpt``) without ``hydra.run.dir`` gets
    ``hydra.run.dir=RUN``; a launch into its checkpoint's own directory records its config
    in ``RUN/.hydra/resume_DATE/``, keeping the first launch's ``.hydra/`` as it was. A
    literal ``hydra.run.dir`` is checked with ``check_run_dir`` here, so a refused run does
    not overwrite another run's ``.hydra/`` or append to its ``train.log``.

    A process of a multi-process run (``launch_rank``) needs a literal ``hydra.run.dir``:
    Hydra's timestamped default would differ between processes. Processes other than rank
    zero skip the check (rank zero holds the directory) and get ``_FOLLOWER_OVERRIDES``.
    """
    check_overrides(args)
    if any(arg in NO_JOB_FLAGS or arg in ("-m", "--multirun") for arg in args):
        return args
    values = literal_overrides(args, ("ckpt_path", "hydra.run.dir", "hydra.output_subdir", "hydra.mode"))
    if values.get("hydra.mode") == "MULTIRUN":
        return args
    ckpt_path = values.get("ckpt_path")
    if ckpt_path and "${" not in ckpt_path and not Path(ckpt_path).is_file():
        raise PneumoError(f"ckpt_path not found: {ckpt_path}")
    own = checkpoint_run_dir(ckpt_path) if ckpt_path and "${" not in ckpt_path else None
    args = list(args)
    run_dir = values.get("hydra.run.dir")
    if run_dir is None and own is not None:
        run_dir = str(own)
        args.append(f"hydra.run.dir={hydra_quote(own)}")  # sweep folders hold = and ,
    rank, processes = launch_rank()
    if (rank > 0 or processes > 1) and (run_dir is None or "${" in run_dir):
        raise PneumoError(
            f"this process is one of a multi-process run (rank {rank}): give every process the "
            "same hydra.run.dir=DIR (e.g. hydra.run.dir=outputs/train/runs/$SLURM_JOB_ID), so that "
            "they share one run directory"
        )
    if rank > 0:
        return [*args, *_FOLLOWER_OVERRIDES]
    check_launch_dir(args)  # before Hydra creates the folder and its log
    if run_dir is None or "${" in run_dir:
        return args  # a new directory of Hydra's naming, checked again when the run starts
    if own is not None and own.resolve() == Path(run_dir).resolve() and "hydra.output_subdir" not in values:
        args.append(f"hydra.output_subdir=.hydra/resume_{datetime.now():%Y-%m-%d_%H-%M-%S_%f}")
    check_run_dir(run_dir, ckpt_path)
    return args


def requeued_resume(args: list[str]) -> list[str]:
    """Complete the command line of a SLURM job that SLURM started again (``scontrol requeue``,
    e.g. by ``slurm.requeue=true``: ``SLURM_RESTART_COUNT`` is 1 or more): it runs its first
    command line again, so with a literal ``hydra.run.dir`` that holds the run's checkpoints and
    no ``ckpt_path``, ``ckpt_path`` becomes the run's newest of ``interrupted.ckpt`` and
    ``last.ckpt``, and the run continues where it stopped instead of being refused."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    if not restarts.isdigit() or int(restarts) < 1 or any(a in ("-m", "--multirun") for a in args):
        return args
    values = literal_overrides(args, ("ckpt_path", "hydra.run.dir"))
    run_dir = values.get("hydra.run.dir")
    if values.get("ckpt_path") or not run_dir or "${" in run_dir:
        return args
    found = [Path(run_dir) / "checkpoints" / name for name in RESUMABLE]
    found = [path for path in found if path.is_file()]
    if not found:
        return args
    newest = max(found, key=lambda path: path.stat().st_mtime)
    print(f"SLURM started this job again (restart {restarts}): resuming {newest}", file=sys.stderr)
    return [*args, f"ckpt_path={hydra_quote(newest)}"]
