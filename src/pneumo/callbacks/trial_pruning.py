"""An Optuna trial's pruning inside a Lightning run (pneumo-search)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import lightning as L

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


class TrialPruning(L.Callback):
    """Report ``metric`` to an Optuna trial after every validation epoch, and end the run (as
    early stopping does, so its checkpoints and TensorBoard files are complete) once the
    study's pruner judges the trial not worth finishing."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.pruned = False
        # set when the first training epoch begins: an error after it belongs to this trial's
        # settings (e.g. a learning rate that diverges), one before it to what all trials share
        self.trained = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trained = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        self.trial.report(float(trainer.callback_metrics[self.metric]), step=trainer.current_epoch)
        if self.trial.should_prune():
            log.info("trial %d pruned after epoch %d", self.trial.number, trainer.current_epoch)
            self.pruned = True
            trainer.should_stop = True
