"""A run cut short: Ctrl-C, SIGTERM, SIGUSR1 or SIGHUP saves ``interrupted.ckpt``, from which a resume
continues exactly, and ``RunOutcome`` tells a finished schedule from a run that was stopped
(a signal, ``trainer.max_time``), so that the command can say so and exit non-zero."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer, WeightAveraging

from pneumo.artifacts.rundir import hydra_quote

log = logging.getLogger(__name__)

# Exit statuses of a run stopped before its schedule finished: 128 + the signal's number for a
# signal, as shells report a process a signal ended; EX_TEMPFAIL (sysexits.h: "try again
# later") for trainer.max_time.
MAX_TIME_EXIT = 75


class SaveOnInterrupt(L.Callback):
    """On Ctrl-C (or SIGTERM), save ``interrupted.ckpt`` beside the other checkpoints.

    Rank zero saves alone, without waiting for the other processes of a DDP run: they hold
    the same weights, and after Ctrl-C some of them may already be gone, so
    ``Trainer.save_checkpoint``'s closing barrier could wait forever.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self._validating = False  # the model may hold the averaged weights
        self.saved: str | None = None  # the file this interruption wrote

    # Weight averaging (callbacks.weight_averaging) swaps the averaged weights into the model
    # for each validation epoch and back after it: interrupted in between, the model holds the
    # averaged weights and the averaging callback the raw ones, and the file would hold them
    # the wrong way round.
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validating = True

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validating = False

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt) and type(exception).__name__ != "SIGTERMException":
            return
        rerun = _validation_unfinished(trainer)
        if self._validating:
            # every process: each holds its model swapped
            for callback in trainer.callbacks:  # type: ignore[attr-defined]  # set by Lightning
                if isinstance(callback, WeightAveraging):
                    callback.on_validation_epoch_end(trainer, pl_module)  # swaps the raw weights back
            self._validating = False
        if not trainer.is_global_zero:
            return
        path = f"{self.dirpath}/interrupted.ckpt"
        # Trainer.save_checkpoint without its barrier; Lightning offers no public way to skip it
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        _set_validation_progress(checkpoint, rerun)
        trainer.strategy.save_checkpoint(checkpoint, path)
        self.saved = path
        # the command's last line says how to resume (pneumo-train: RunOutcome)
        log.info("interrupted: saved %s", path)


def _validation_unfinished(trainer: L.Trainer) -> bool:
    """Whether this epoch's end-of-epoch validation has begun, or is due, but the epoch has
    not yet ended (``fit_loop.epoch_progress``: started, not processed)."""
    if trainer.sanity_checking:
        return False
    # Lightning's annotations name a base tracker; at run time these count processed too
    epochs: Any = trainer.fit_loop.epoch_progress.total
    if epochs.processed == epochs.started:
        return False
    if trainer.validating:
        return True
    every = trainer.check_val_every_n_epoch
    due = trainer.enable_validation and (every is None or (trainer.current_epoch + 1) % every == 0)
    # processed, not completed: the last batch's on_train_batch_end (weight averaging) counts
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # type: ignore[attr-defined]
    return due and done >= trainer.num_training_batches


def _set_validation_progress(checkpoint: dict, rerun: bool) -> None:
    """Make a resume rerun the interrupted epoch's validation, whole, or none of it.

    Lightning reruns a validation only when the interruption fell inside a validation step,
    and then scores the first batches again, as many as were left; one interrupted between
    batches, in the epoch-end metrics or in the last training batch's end is skipped, and
    early stopping then stops the resume for want of ``val/loss`` (or, from the last batch's
    end, the epoch is skipped whole). Validation keeps no state across batches, so where
    ``rerun`` the loop state is made to read as: training batches all done, validation
    interrupted within its first batch; elsewhere, as finished, so that an earlier resume's
    counts cannot read as an unfinished validation.
    """
    loops = checkpoint["loops"]["fit_loop"]
    progress = loops["epoch_loop.val_loop.batch_progress"]
    total, current = progress["total"], progress["current"]
    if not rerun:
        total.update(ready=total["completed"], started=total["completed"], processed=total["completed"])
        return
    for counts in loops["epoch_loop.batch_progress"]["total"], loops["epoch_loop.batch_progress"]["current"]:
        counts["completed"] = counts["processed"]
    # this epoch's earlier validations; the totals are bookkeeping, compared only with each other
    earlier = max(total["completed"] - current["completed"], 0)
    for counts, done in ((total, earlier), (current, 0)):
        counts.update(ready=done + 1, started=done + 1, processed=done, completed=done)


@dataclass(frozen=True)
class Stop:
    """Why and where a run stopped before its schedule finished."""

    cause: str  # "SIGTERM", "Ctrl-C (SIGINT)", "SIGUSR1", "trainer.max_time=00:04:00:00"
    exit_code: int
    epochs_done: int
    max_epochs: int
    checkpoint: str | None  # the file to resume from, None when none was written yet
    run_dir: str
    requeued: bool = False  # SLURM was asked to requeue the job (slurm.requeue=true)


def _signal_name(signum: int) -> str:
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


class RunOutcome(L.Callback):
    """Whether ``fit`` ran its schedule to the end, or why it stopped short (``stop``).

    Lightning ends a run on SIGTERM as if it had finished (exit status 0), and on
    ``trainer.max_time`` too; SIGUSR1 (SLURM's warning before a time limit, ``sbatch
    --signal=USR1@90``) would kill the process without a checkpoint. With this callback SIGUSR1
    stops the run as SIGTERM does, at the next batch, ``SaveOnInterrupt`` saving
    ``interrupted.ckpt``; where Lightning requeues SLURM jobs (``SLURMEnvironment(auto_requeue=True)``)
    its own handler runs first and requeues the job.
    """

    def __init__(self, max_time: Any = None) -> None:
        self.max_time = max_time  # the setting, as the user gave it, for the message
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
        # SIGHUP (the terminal or SSH connection closed) stops a run as SIGTERM does, unless
        # the run was started to ignore it (nohup)
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
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
                _signal_name(self.signal),
                128 + int(self.signal),
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
            f"trainer.max_time={self.max_time}" if self.max_time is not None else "trainer.max_time",
            MAX_TIME_EXIT,
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


def _path_value(path: str) -> str:
    """A path as an override value: as it is where Hydra reads it back unchanged, else quoted."""
    return path if "/" in path and re.fullmatch(r"[A-Za-z0-9_./-]+", path) else hydra_quote(path)


def stop_message(stop: Stop, resume_args: list[str], prog: str = "pneumo-train") -> str:
    """The one line for a run stopped short: what stopped it, after how many epochs, what was
    saved, and the command that resumes it (``resume_args``: the run's own overrides)."""
    limit = f" of {stop.max_epochs}" if stop.max_epochs != -1 else ""
    counted = stop.max_epochs if limit else stop.epochs_done
    head = (
        f"stopped by {stop.cause} after {stop.epochs_done}{limit} epoch{'s' if counted != 1 else ''}, "
        "before the schedule finished"
    )
    if stop.checkpoint is None:
        return f"{head}; no checkpoint was written yet: run the command again"
    by_time = stop.cause.startswith("trainer.max_time")
    skipped = ("ckpt_path=", "hydra.run.dir=", *(("trainer.max_time=",) if by_time else ()))
    args = [a for a in resume_args if not a.lstrip("+").startswith(skipped)]
    if by_time:  # the elapsed time is restored with the run: the same limit would stop it at once
        args.append("trainer.max_time=null")
    args += [f"ckpt_path={_path_value(stop.checkpoint)}", f"hydra.run.dir={_path_value(stop.run_dir)}"]
    command = " ".join([prog, *(shlex.quote(a) for a in args)])
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


def end_run(outcome: RunOutcome, run_dir: str | Path, resume_args: list[str], in_sweep: bool = False) -> None:
    """After ``fit``: nothing when the schedule finished; else say so once, in one line on
    stderr (and in train.log), and exit with the stop's status (``Stop.exit_code``).

    A job of an in-process sweep that ``trainer.max_time`` stopped only says so: the sweep's
    other jobs still run.
    """
    stop = outcome.stop(run_dir)
    if stop is None:
        return
    message = stop_message(stop, resume_args)
    if outcome.rank_zero:
        if stop.requeued and stop.checkpoint and Path(stop.checkpoint).name == "interrupted.ckpt":
            # Lightning's requeue handler saved hpc_ckpt_N.ckpt mid-batch; interrupted.ckpt, saved
            # after it at a batch boundary, is what the requeued job resumes: the copy goes
            for hpc in Path(run_dir).glob("hpc_ckpt_*.ckpt"):
                hpc.unlink(missing_ok=True)
        print(message, file=sys.stderr, flush=True)
        _to_log_files(message)
    if in_sweep and stop.exit_code == MAX_TIME_EXIT:
        return
    raise SystemExit(stop.exit_code)
