"""Lightning's learning-rate monitor on the epoch axis."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor


class EpochLearningRateMonitor(LearningRateMonitor):
    """``LearningRateMonitor`` whose once-an-epoch learning rate (``lr-AdamW``) is logged with
    the epoch's other figures, at x = the epoch number, instead of straight to the loggers at
    the global step (which would put a batch-size sweep's curves at different x). With
    ``logging_interval=step`` it is Lightning's own, on the step axis."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: object, **kwargs: object) -> None:
        if self.logging_interval == "step":
            return
        stats = self._extract_stats(trainer, "epoch" if self.logging_interval is None else "any")
        for name, value in stats.items():
            trainer.lightning_module.log(name, value, on_step=False, on_epoch=True)
