"""How a fit ended: ``RunOutcome`` tells a finished schedule from a run that was stopped (a
signal, ``trainer.max_time``) and records why and where (``Stop``), so that the command can
say so and exit non-zero."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer

from pneumo.callbacks.save_on_interrupt import SaveOnInterrupt

# EX_TEMPFAIL: the exit status of a run that trainer.max_time stopped
MAX_TIME_EXIT = 75


@dataclass(frozen=True)
class Stop:
    """Why and where a run stopped before its schedule finished."""

    # the signal that stopped it (SIGINT, SIGTERM, SIGUSR1, SIGHUP); None: trainer.max_time
    signal: int | None
    epochs_done: int
    max_epochs: int  # -1: no epoch limit
    checkpoint: str | None  # the file to resume from, None when none was written yet
    run_dir: str
    requeued: bool = False  # SLURM was asked to requeue the job (slurm.requeue=true)

    @property
    def cause(self) -> str:
        """What stopped the run: ``Ctrl-C (SIGINT)``, ``SIGTERM``, ``trainer.max_time``..."""
        if self.signal is None:
            return "trainer.max_time"
        return "Ctrl-C (SIGINT)" if self.signal == signal.SIGINT else signal.Signals(self.signal).name

    @property
    def exit_status(self) -> int:
        """The exit status of the stopped run: 128 + the signal's number, as shells report a
        process a signal ended; EX_TEMPFAIL (75, sysexits.h: "try again later") for
        ``trainer.max_time``."""
        return MAX_TIME_EXIT if self.signal is None else 128 + self.signal

    def describe(self, max_time: object = None) -> str:
        """``stopped by SIGTERM after 3 of 25 epochs`` (``max_time``: the ``trainer.max_time``
        setting as the user gave it, named when it stopped the run)."""
        by_time = self.signal is None and max_time is not None
        cause = f"trainer.max_time={max_time}" if by_time else self.cause
        limit = f" of {self.max_epochs}" if self.max_epochs != -1 else ""
        counted = self.max_epochs if limit else self.epochs_done
        return f"stopped by {cause} after {self.epochs_done}{limit} epoch{'s' if counted != 1 else ''}"


class RunOutcome(L.Callback):
    """Whether ``fit`` ran its schedule to the end, or why it stopped short (``stop``).

    Lightning ends a run on SIGTERM as if it had finished (exit status 0), and on
    ``trainer.max_time`` too; SIGUSR1 (SLURM's warning before a time limit, ``sbatch
    --signal=USR1@90``) would kill the process without a checkpoint. With this callback SIGUSR1
    stops the run as SIGTERM does, at the next batch, ``SaveOnInterrupt`` saving
    ``interrupted.ckpt``; where Lightning requeues SLURM jobs (``SLURMEnvironment(auto_requeue=True)``)
    its own handler runs first and requeues the job.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.requeued = False
        self._trainer: L.Trainer | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer

    @property
    def rank_zero(self) -> bool:
        return self._trainer is None or self._trainer.is_global_zero

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning registered its handlers (it restores the earlier ones at the end)
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            # SIGHUP (the terminal or SSH connection closed) stops a run as SIGTERM does,
            # unless the run was started to ignore it (nohup)
            for name in ("SIGTERM", "SIGUSR1", "SIGHUP"):
                signum = getattr(signal, name, None)
                if signum is not None and signal.getsignal(signum) != signal.SIG_IGN:
                    self._chain(trainer, signum)

    def _chain(self, trainer: L.Trainer, signum: int) -> None:
        """Record ``signum`` when it comes, then let the handler before this one act; SIGUSR1
        without one stops the run at the next batch, as SIGTERM does."""
        before = signal.getsignal(signum)

        def handler(number: int, frame: FrameType | None) -> None:
            self.signal = self.signal or number
            if callable(before):
                if number == getattr(signal, "SIGUSR1", None):
                    self.requeued = True  # Lightning's SLURM handler: it saves and requeues the job
                before(number, frame)
            # stop at the next batch boundary, where SaveOnInterrupt saves interrupted.ckpt
            trainer._signal_connector.received_sigterm = True

        signal.signal(signum, handler)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._trainer = trainer
        if isinstance(exception, KeyboardInterrupt):
            self.signal = self.signal or signal.SIGINT
        elif type(exception).__name__ == "SIGTERMException":
            self.signal = self.signal or signal.SIGTERM

    def stop(self, run_dir: str | Path) -> Stop | None:
        """Why the run stopped short, or ``None`` when its schedule finished (all
        ``max_epochs``, ``max_steps``, or early stopping ended it) or it never started."""
        trainer = self._trainer
        if trainer is None:
            return None
        done = int(trainer.fit_loop.epoch_progress.current.completed)
        max_epochs = int(trainer.max_epochs if trainer.max_epochs is not None else -1)
        # a signal that came once the schedule had ended (during the last epoch's end) stops nothing
        if self.signal is not None and not _schedule_done(trainer, done, max_epochs):
            saved = next(
                (c.saved for c in trainer.callbacks if isinstance(c, SaveOnInterrupt) and c.saved),  # type: ignore[attr-defined]
                None,
            )
            return Stop(
                int(self.signal),
                done,
                max_epochs,
                saved or _last_checkpoint(trainer),
                str(run_dir),
                self.requeued,
            )
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # type: ignore[attr-defined]
        if timer is None or not _finished_early(trainer, timer, done, max_epochs):
            return None
        return Stop(
            None,
            done,
            max_epochs,
            _last_checkpoint(trainer),
            str(run_dir),
        )


def _schedule_done(trainer: L.Trainer, done: int, max_epochs: int) -> bool:
    """Whether the run's schedule ended: all epochs or steps, or early stopping."""
    if max_epochs != -1 and done >= max_epochs:
        return True
    if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
        return True
    return any(
        isinstance(c, EarlyStopping) and c.stopped_epoch > 0
        for c in trainer.callbacks  # type: ignore[attr-defined]
    )


def _finished_early(trainer: L.Trainer, timer: Timer, done: int, max_epochs: int) -> bool:
    """Whether ``timer`` ended the run before its schedule did."""
    if _schedule_done(trainer, done, max_epochs) or getattr(trainer, "fast_dev_run", False):
        return False
    remaining = timer.time_remaining("train")
    return remaining is not None and remaining <= 0


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    """The run's most recent checkpoint written every epoch (last.ckpt), if there is one."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor is None:
            path = callback.last_model_path or callback.best_model_path
            if path and os.path.isfile(path):
                return path
    return None


def drop_requeue_copies(stop: Stop) -> None:
    """Delete Lightning's ``hpc_ckpt_N.ckpt`` of a requeued run that saved ``interrupted.ckpt``.

    Lightning's requeue handler saved it mid-batch; ``interrupted.ckpt``, saved after it at a
    batch boundary, is what the requeued job resumes: the copy goes.
    """
    if stop.requeued and stop.checkpoint and Path(stop.checkpoint).name == "interrupted.ckpt":
        for hpc in Path(stop.run_dir).glob("hpc_ckpt_*.ckpt"):
            hpc.unlink(missing_ok=True)
