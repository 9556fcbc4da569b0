"""Step the learning-rate schedule before the epoch's checkpoints, so a resume is exact."""

from __future__ import annotations

import lightning as L
import torch

from pneumo.errors import PneumoError

# A schedule's step frequency no epoch count reaches: Lightning then never steps it itself.
_NEVER = 2**62


class EpochLRStep(L.Callback):
    """Take per-epoch learning-rate stepping over from Lightning.

    Lightning steps an epoch schedule after the epoch's checkpoints are written, so
    ``last.ckpt`` would hold the previous epoch's schedule and a resumed run would repeat a
    step. This callback steps it in ``on_train_epoch_end``, which Lightning calls before the
    checkpoint callbacks, and sets each epoch schedule's frequency out of Lightning's reach.
    A plateau schedule steps only after an epoch that validated, on its fresh figure.
    Training adds it to every run (``pneumo.training.build.build``).
    """

    def __init__(self) -> None:
        self._validated_epoch = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for config in trainer.lr_scheduler_configs:
            if config.interval == "epoch":
                config.frequency = _NEVER

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for config in trainer.lr_scheduler_configs:
            if config.interval != "epoch":
                continue
            if not isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                config.scheduler.step()
                continue
            if self._validated_epoch != trainer.current_epoch:
                continue  # no validation this epoch (check_val_every_n_epoch): nothing new to follow
            metric = trainer.callback_metrics.get(config.monitor or "")
            if metric is None:
                raise PneumoError(
                    f"model.scheduler ReduceLROnPlateau follows {config.monitor}, which validation did "
                    "not log; monitor a logged metric (monitor.metric) or use model/scheduler=cosine"
                )
            config.scheduler.step(metric)
