"""Epoch timing with a one-line console report, the successor of the original trainer's."""

from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger(__name__)


class EpochReport(L.Callback):
    """Time each epoch's training and validation and report them with the key metrics.

    Logs ``time/train_epoch_s`` (the training batches, up to validation) and
    ``time/val_epoch_s`` to the loggers and prints one line per epoch, the successor of the
    original trainer's "val loss / val time / val accuracy": accuracy, sensitivity and
    specificity at 0.5 and at the threshold chosen on this validation (the one the run ships).
    Checkpoint writing, which follows validation, counts in neither. With several processes
    (DDP) the times are the slowest process's, and only rank zero prints the line.
    """

    def __init__(self) -> None:
        self._epoch_start = 0.0
        self._train_seconds: float | None = None
        self._val_start = 0.0
        self._val_seconds = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a run resumed within an epoch (Ctrl-C's interrupted.ckpt) enters that epoch without
        # on_train_epoch_start: Lightning's own condition for skipping it, FitLoop.on_advance_start
        self._epoch_start = time.perf_counter()
        loop = trainer.fit_loop
        if trainer.is_global_zero and loop.restarted_mid_epoch:
            log.info(
                "epoch %d resumes after batch %d of %s: its train time counts the batches from here",
                trainer.current_epoch,
                loop.epoch_loop.batch_progress.current.processed,  # type: ignore[attr-defined]
                trainer.num_training_batches,
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._train_seconds = None
        self._val_seconds = 0.0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()
        if not trainer.sanity_checking and self._train_seconds is None:
            self._train_seconds = self._val_start - self._epoch_start

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        seconds = time.perf_counter() - self._val_start
        self._val_seconds += seconds
        pl_module.log("time/val_epoch_s", seconds, sync_dist=True, reduce_fx="max")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        train_seconds = self._train_seconds
        if train_seconds is None:  # no validation this epoch
            train_seconds = time.perf_counter() - self._epoch_start
        pl_module.log("time/train_epoch_s", train_seconds, sync_dist=True, reduce_fx="max")
        # read on every process: reading computes the epoch's figures, which gathers from all
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if not trainer.is_global_zero:
            return

        def show(key: str, fmt: str = ".4f") -> str:
            return format(metrics[key], fmt) if key in metrics else "-"

        # counted from 0, as Lightning's progress bar, TensorBoard and checkpoints count them
        last = f"/{trainer.max_epochs - 1}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        log.info(
            "epoch %d%s  train loss %s auroc %s  |  val loss %s auroc %s  at 0.5: acc %s sens %s spec %s  "
            "at threshold %s: acc %s sens %s spec %s  |  train time %.1fs  val time %.1fs",
            trainer.current_epoch,
            last,
            show("train/loss"),
            show("train/auroc"),
            show("val/loss"),
            show("val/auroc"),
            show("val/at_0.5/acc"),
            show("val/at_0.5/sensitivity"),
            show("val/at_0.5/specificity"),
            show("val/threshold", ".3f"),
            show("val/at_threshold/acc"),
            show("val/at_threshold/sensitivity"),
            show("val/at_threshold/specificity"),
            train_seconds,
            self._val_seconds,
        )
