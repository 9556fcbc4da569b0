"""pneumo-train's command line, read and completed before Hydra writes anything.

A resume (``ckpt_path=RUN/checkpoints/X.ckpt``) continues in its run directory, a process of
a multi-process run shares rank zero's, a SLURM job started again resumes its run, and an
override Hydra cannot parse or a run directory that cannot be written is refused in one line.
The run directory itself and its lock are ``pneumo.artifacts.rundir``'s.
"""

from __future__ import annotations

import os
import re
import sys
from datetime import datetime
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from pneumo.artifacts.output import check_folder_destination
from pneumo.artifacts.rundir import RESUMABLE, check_run_dir, checkpoint_run_dir, launch_rank
from pneumo.errors import PneumoError

# What a process other than rank zero adds to its command line (the last value of a key
# wins): rank zero alone records the run, so no .hydra/ and no log file; warnings and errors
# still reach its console.
_FOLLOWER_OVERRIDES = (
    "hydra.output_subdir=null",
    "hydra/job_logging=stdout",
    "hydra.job_logging.root.level=WARNING",
)

# Hydra flags that print or complete instead of running a job.
_NO_JOB_FLAGS = ("-c", "--cfg", "-h", "--help", "--hydra-help", "-i", "--info", "-sc", "--shell-completion")


def _literal_overrides(args: list[str], keys: tuple[str, ...]) -> dict[str, str | None]:
    """The values of ``key=value`` arguments for ``keys`` (also ``+key``, ``++key``), unquoted."""
    parser = OverridesParser.create()
    found: dict[str, str | None] = {}
    for arg in args:
        if arg.lstrip("+").split("=", 1)[0] not in keys:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:  # Hydra itself reports a malformed override, in its own words
            continue
        if override.is_sweep_override():
            continue
        value = override.value()
        found[override.key_or_group] = value if value is None else str(value)
    return found


def hydra_quote(value: str | Path) -> str:
    """``value`` as a Hydra override value that reads back as exactly that string, whatever it
    holds: spaces, ``=``, ``,``, brackets, quotes, backslashes, ``${`` (never an interpolation),
    any Unicode. For command lines pneumo writes itself (``key=`` + ``hydra_quote(path)``)."""
    text = re.sub(r"(\\+)(?='|\$\{|$)", lambda m: m.group(1) * 2, str(value))
    text = text.replace("${", "\\${").replace("'", "\\'")
    return f"'{text}'"


def check_overrides(args: list[str]) -> None:
    """Stop on an override Hydra cannot parse, naming its key and the quoting that fixes it.

    Hydra's own message ("mismatched input '=' expecting <EOF>") names neither.
    """
    parser = OverridesParser.create()
    for arg in (a for a in args if "=" in a and not a.startswith("-")):
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as err:
            key, value = arg.split("=", 1)
            reason = str(err).splitlines()[0] if str(err) else "not a valid override"
            raise PneumoError(
                f"cannot read the override {arg!r} (key {key.lstrip('+')}): {reason}; quote a value "
                f"holding '=', spaces or brackets, e.g. '{key}=\"{value}\"'"
            ) from None


def check_launch_dir(args: list[str]) -> None:
    """Refuse a Hydra command line whose run directory cannot be written: a literal
    ``hydra.run.dir`` that is a file, lies under a file or in a read-only place, or (without it)
    Hydra's default ``outputs/`` in the current folder (``check_folder_destination``)."""
    if any(arg in _NO_JOB_FLAGS or arg in ("-m", "--multirun") for arg in args):
        return
    run_dir = _literal_overrides(args, ("hydra.run.dir",)).get("hydra.run.dir")
    if run_dir is None:
        check_folder_destination(Path("outputs"), "outputs/ (where runs go unless hydra.run.dir=DIR says)")
    elif "${" not in run_dir:
        check_folder_destination(Path(run_dir), f"hydra.run.dir={run_dir}")


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
    if any(arg in _NO_JOB_FLAGS or arg in ("-m", "--multirun") for arg in args):
        return args
    values = _literal_overrides(args, ("ckpt_path", "hydra.run.dir", "hydra.output_subdir", "hydra.mode"))
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
    values = _literal_overrides(args, ("ckpt_path", "hydra.run.dir"))
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
