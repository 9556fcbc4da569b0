"""A run cut short: Ctrl-C, SIGTERM, SIGUSR1 or SIGHUP saves ``interrupted.ckpt``, from which a resume
continues exactly (``RunOutcome`` then records why the run stopped)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging

from pneumo.artifacts.checkpoint import ctrl_c_after

log = logging.getLogger(__name__)


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
        # the run stops already: a second Ctrl-C must not cut this save short (Lightning's own
        # Ctrl-C path ignores it; after SIGTERM it would end the run without its stop line)
        with ctrl_c_after(deliver=False):
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
