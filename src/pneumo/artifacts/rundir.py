"""Run directories: one run per directory, and a resumed run continues in its own.

A run directory holds ``checkpoints/``, ``tensorboard/``, ``train.log`` and Hydra's
``.hydra/``. Two runs in one directory would mix their TensorBoard curves and leave
``best.ckpt`` to whichever wrote last, so a new run refuses a directory that holds a run or
is being written by one (``run.lock``, holding the writer's process id). Resuming
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
import os
from collections.abc import Iterator
from pathlib import Path

from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from pneumo.artifacts.output import check_folder_destination
from pneumo.errors import PneumoError

LOCK_NAME = "run.lock"


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


def _lock_holder(lock: Path) -> int | None:
    """The live process that holds ``lock``; ``None`` when there is no lock or its process is gone.

    A lock that names no process (cut short while it was being written) counts as held: it
    cannot be told apart from one being written right now.
    """
    try:
        text = lock.read_text().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():
        return -1
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, owned by another user
        return pid
    return pid


def _refuse_locked(run_dir: Path, pid: int) -> None:
    lock = run_dir / LOCK_NAME
    who = f"process {pid}" if pid > 0 else "a process"
    raise PneumoError(
        f"{run_dir} is being written by another run ({who}, {lock}); wait for it to end or "
        f"train into a new directory (delete {lock} only if no run is writing there)"
    )


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
    pid = _lock_holder(run_dir / LOCK_NAME)
    if pid is not None:
        _refuse_locked(run_dir, pid)
    _check_contents(run_dir, ckpt_path)


@contextlib.contextmanager
def claim_run_dir(run_dir: str | Path, ckpt_path: str | Path | None) -> Iterator[None]:
    """Hold ``run_dir/run.lock`` for the length of a run, after the checks of ``check_run_dir``.

    The lock is created atomically (``O_EXCL``), so of two runs started at once into one
    directory exactly one proceeds. A lock left by a process that no longer exists (a killed
    run) is taken over.
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
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _lock_holder(lock)
            if pid is not None:
                _refuse_locked(run_dir, pid)
            lock.unlink(missing_ok=True)  # stale: its run was killed
            continue
        except OSError as err:
            raise PneumoError(
                f"cannot write in the run directory {run_dir}: {(err.strerror or str(err)).lower()}; "
                "choose a folder you can write to (hydra.run.dir)"
            ) from None
        with os.fdopen(fd, "w") as file:
            file.write(f"{os.getpid()}\n")
        break
    else:
        _refuse_locked(run_dir, -1)
    try:
        _check_contents(run_dir, ckpt_path)  # under the lock: no run can start writing meanwhile
        yield
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()
