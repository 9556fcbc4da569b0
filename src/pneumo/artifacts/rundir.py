"""Run directories: one run per directory, and a resumed run continues in its own.

A run directory holds ``checkpoints/``, ``tensorboard/``, ``train.log`` and Hydra's
``.hydra/``. Two runs in one directory would mix their TensorBoard curves and leave
``best.ckpt`` to whichever wrote last, so a new run refuses a directory that holds a run or
is being written by one: the writer holds an exclusive ``flock`` on ``run.lock``, which
names it (host, process, start) for the message that refuses another run. Resuming
(``ckpt_path=RUN/checkpoints/last.ckpt``) is the one way back into a used directory, and
without an explicit ``hydra.run.dir`` it continues in RUN, so ``best.ckpt``, the TensorBoard
curves and ``train.log`` cover the whole run.

A run of several processes (DDP) has one run directory: rank zero claims, checks and records
it; the other processes are given the same ``hydra.run.dir`` (Lightning's own launcher passes
rank zero's; under torchrun and srun every process needs it on its command line) and write
neither ``.hydra/`` nor a log file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from pneumo.artifacts.output import check_folder_destination
from pneumo.errors import PneumoError

LOCK_NAME = "run.lock"

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


def launch_rank() -> tuple[int, int]:
    """This process's rank and the number of processes, as its launcher announced them.

    torchrun and srun announce both to every process. Lightning's own launcher
    (``trainer.devices`` > 1) starts the other processes of a node with ``LOCAL_RANK``,
    ``NODE_RANK`` and ``WORLD_SIZE``; the rank returned for those is not the global one, but
    it is 0 only for global rank zero. A process started by hand is ``(0, 1)``.
    """
    for environment in (TorchElasticEnvironment, SLURMEnvironment):
        if environment.detect():
            launched = environment()
            return launched.global_rank(), launched.world_size()
    local, node = (int(os.environ.get(key, "0")) for key in ("LOCAL_RANK", "NODE_RANK"))
    return local + node, int(os.environ.get("WORLD_SIZE", "1"))


def checkpoint_run_dir(ckpt_path: str | Path) -> Path | None:
    """The run directory a checkpoint belongs to (the folder above its ``checkpoints/``), if any."""
    path = Path(ckpt_path).absolute()
    return path.parent.parent if path.parent.name == "checkpoints" else None


def run_evidence(run_dir: Path) -> Path | None:
    """A file showing that ``run_dir`` holds a run: a checkpoint or a TensorBoard event file.

    Hydra's ``.hydra/`` and ``train.log`` do not count: Hydra writes them before pneumo runs.
    """
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    if checkpoints:
        last = run_dir / "checkpoints" / "last.ckpt"
        return last if last in checkpoints else checkpoints[0]
    return next(iter(sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"))), None)


def _holder_of(lock: Path) -> str:
    """Who holds ``lock``, as its holder recorded it (host, process, start), for a message."""
    try:
        text = " ".join(lock.read_text(errors="replace").split())
    except OSError:
        text = ""
    return text or "a process that has not yet written its name"


def _lock_is_held(lock: Path) -> bool:
    """Whether a live run holds ``lock`` now: a shared lock is refused only while one holds it.

    The kernel (or the NFS lock manager) drops a lock when its process ends, however it
    ends, so a file left by a killed run is free; the file's content only names the holder.
    """
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:  # none, or unreadable: claim_run_dir says why if it cannot take it
        return False
    try:
        return not _try_flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)  # closing drops the probe's own shared lock


def _try_flock(fd: int, kind: int) -> bool:
    """Take a ``flock`` of ``kind`` on ``fd`` without waiting: ``False`` if another holds it."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):  # some file systems answer EACCES
            return False
        raise
    return True


def _refuse_locked(run_dir: Path) -> NoReturn:
    lock = run_dir / LOCK_NAME
    raise PneumoError(
        f"{run_dir} is being written by another run ({_holder_of(lock)}; {lock}); wait for it to "
        "end or train into a new directory"
    )


def _take_lock(lock: Path) -> int | None:
    """An exclusive ``flock`` on ``lock`` (created if missing): its descriptor, or ``None`` when
    another run holds it.

    A holder removes the file before it lets go; a process that opened the old file just
    then would lock a file no longer under that name, so the lock is retaken until the
    locked file is the one the name points to.
    """
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _try_flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            return None
        if _names(lock, fd):
            return fd
        os.close(fd)


def _names(lock: Path, fd: int) -> bool:
    """Whether the name ``lock`` still points to the file open as ``fd``."""
    try:
        current = os.stat(lock)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)


def _record_holder(fd: int) -> None:
    """Write who holds the lock into its file, for another run's refusal to name."""
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())


def _check_contents(run_dir: Path, ckpt_path: str | Path | None) -> None:
    """Refuse ``run_dir`` when it holds a run other than the one ``ckpt_path`` resumes."""
    own = checkpoint_run_dir(ckpt_path) if ckpt_path else None
    if own is not None and own.resolve() == run_dir.resolve():
        return
    evidence = run_evidence(run_dir)
    if evidence is None:
        return
    if evidence.suffix == ".ckpt":
        raise PneumoError(
            f"{run_dir} already holds a run ({evidence.name}); resume it with ckpt_path={evidence}, "
            "or train into a new directory"
        )
    raise PneumoError(
        f"{run_dir} already holds a run's TensorBoard logs ({evidence}) and no checkpoint to resume; "
        "train into a new directory"
    )


def check_run_dir(run_dir: str | Path, ckpt_path: str | Path | None) -> None:
    """Refuse a run into ``run_dir`` when another run writes there or it holds another run.

    Resuming a checkpoint of ``run_dir`` itself is allowed: that run continues.
    """
    run_dir = Path(run_dir).absolute()
    if _lock_is_held(run_dir / LOCK_NAME):
        _refuse_locked(run_dir)
    _check_contents(run_dir, ckpt_path)


@contextlib.contextmanager
def claim_run_dir(run_dir: str | Path, ckpt_path: str | Path | None) -> Iterator[None]:
    """Hold ``run_dir/run.lock`` for the length of a run, after the checks of ``check_run_dir``.

    The lock is an exclusive ``flock`` (``_take_lock``): of two runs started at once into
    one directory, from one machine or from two sharing the folder, exactly one proceeds.
    The kernel releases it when the run's process ends, however it ends, so a killed run's
    directory is free again without anyone telling a stale lock from a live one.
    """
    run_dir = Path(run_dir).absolute()
    check_folder_destination(run_dir, f"the run directory {run_dir}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PneumoError(
            f"cannot create the run directory {run_dir}: {(err.strerror or str(err)).lower()}"
        ) from None
    lock = run_dir / LOCK_NAME
    try:
        fd = _take_lock(lock)
    except OSError as err:
        raise PneumoError(
            f"cannot lock the run directory {run_dir} ({lock}): {(err.strerror or str(err)).lower()}; "
            "choose a folder you can write to (hydra.run.dir) on a file system that supports locks"
        ) from None
    if fd is None:
        _refuse_locked(run_dir)
    try:
        _record_holder(fd)
        _check_contents(run_dir, ckpt_path)  # under the lock: no run can start writing meanwhile
        yield
    finally:
        with contextlib.suppress(OSError):
            if _names(lock, fd):  # not a file someone put in its place
                lock.unlink()  # while still held: see _take_lock
        # unlocked explicitly: forked loader workers may still hold copies of the descriptor
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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


def _quoted(path: Path) -> str:
    """``path`` as a quoted Hydra override value (sweep folders hold ``=`` and ``,``)."""
    return hydra_quote(path)


def check_overrides(args: list[str]) -> None:
    """Stop on an override Hydra cannot parse, naming its key and the quoting that fixes it.

    Hydra's own message ("mismatched input '=' expecting <EOF>") names neither.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

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
        args.append(f"hydra.run.dir={_quoted(own)}")
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


# The checkpoints a requeued job resumes from, most recent first when both are there.
RESUMABLE = ("interrupted.ckpt", "last.ckpt")


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
