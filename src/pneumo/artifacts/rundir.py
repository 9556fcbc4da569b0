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
neither ``.hydra/`` nor a log file. The command line that leads there (the resume's
``hydra.run.dir``, a follower's overrides) is completed by ``pneumo-train`` (``pneumo.cli.launch``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from pneumo.artifacts.output import check_folder_destination
from pneumo.errors import PneumoError

LOCK_NAME = "run.lock"
# What Hydra writes into a run directory before pneumo runs: a directory holding no more holds no run.
HYDRA_ONLY = frozenset({".hydra", "train.log"})
# The checkpoints a requeued job resumes from, most recent first when both are there.
RESUMABLE = ("interrupted.ckpt", "last.ckpt")


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


def remove_unused_run_dir(run_dir: str | Path) -> bool:
    """Remove ``run_dir`` when it holds only what Hydra wrote before pneumo refused the run
    (``.hydra/``, ``train.log``), so that a refused launch leaves no folder that reads as a run.
    For a folder Hydra named for this launch alone (its timestamp has microseconds): a folder
    holding anything else stays as it is. Returns whether it was removed."""
    run_dir = Path(run_dir)
    names = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    if ".hydra" not in names or not names <= HYDRA_ONLY:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True
