"""The LightningModule: the network's loss, metrics, threshold and optimiser hooks."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from pneumo.checkpoint import CheckpointMeta, read_meta
from pneumo.errors import PneumoError
from pneumo.metrics import classification_metrics
from pneumo.network import NUM_CLASSES, build_resnet18, load_backbone_weights, positive_probability
from pneumo.threshold import THRESHOLD_METHODS, choose_threshold

log = logging.getLogger(__name__)


class XrayClassifier(L.LightningModule):
    """ResNet18 sorting films into two classes; ``positive_index`` is the positive one's column
    (``data.positive_class``'s place in ``data.classes``, set by ``pneumo.train.build``).

    ``optimizer`` and ``scheduler`` are Hydra configs with ``_partial_: true``, kept as plain
    dicts (so checkpoints load with ``weights_only=True``) and instantiated in
    ``configure_optimizers``. After every validation epoch the decision threshold is chosen
    on that epoch's validation predictions, so each checkpoint carries its own.
    """

    def __init__(
        self,
        weights: str | None = "IMAGENET1K_V1",
        positive_index: int = 1,
        monitor: str = "val/loss",
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        threshold_method: str = "youden",
        target_sensitivity: float = 0.95,
    ) -> None:
        super().__init__()
        if threshold_method not in THRESHOLD_METHODS:
            raise PneumoError(
                f"model.threshold_method={threshold_method!r} is not valid: use one of "
                f"{', '.join(THRESHOLD_METHODS)}"
            )
        if not 0.0 < target_sensitivity <= 1.0:
            raise PneumoError(f"model.target_sensitivity={target_sensitivity} is not valid: use (0, 1]")
        if not 0.0 <= label_smoothing < 1.0:
            raise PneumoError(f"model.label_smoothing={label_smoothing} is not valid: use a value in [0, 1)")
        self.save_hyperparameters(logger=False)
        self.net = build_resnet18(NUM_CLASSES)
        if weights:
            load_backbone_weights(self.net, weights)
        self.net = self.net.to(memory_format=torch.channels_last)
        self.train_metrics = classification_metrics("train/")
        self.val_metrics = classification_metrics("val/")
        self.register_buffer("class_weights", torch.ones(NUM_CLASSES), persistent=False)
        self.threshold = 0.5
        self._val_probs: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []
        self._val_losses: list[torch.Tensor] = []
        # (P(positive), is positive) of the last validation epoch, in validation order
        self.val_predictions: tuple[torch.Tensor, torch.Tensor] | None = None
        self._validated_epoch = -1  # a plateau schedule steps only on a fresh val/loss
        # set by pneumo.train.build, or restored from a checkpoint; saved with every checkpoint
        self.meta: CheckpointMeta | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a normalised ``N x 3 x H x W`` batch."""
        return self.net(x)

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        weights = datamodule.class_weights() if datamodule is not None else None
        if weights is not None:
            self.class_weights = weights.to(self.device)
            log.info("class-weighted loss: %s", [round(w, 3) for w in weights.tolist()])

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], metrics):
        images, targets = batch
        logits = self(images)
        loss = F.cross_entropy(
            logits, targets, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing
        )
        probs = positive_probability(logits.detach(), self.hparams.positive_index)
        positive = (targets == self.hparams.positive_index).long()
        metrics.update(probs, positive)
        return loss, probs, positive

    def training_step(self, batch, batch_idx):
        if batch[0].numel() == 0:
            return None
        loss, _, _ = self._step(batch, self.train_metrics)
        if not torch.isfinite(loss):
            raise PneumoError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step}; lower the learning rate (model.optimizer.lr). The last good "
                "checkpoint is kept in the run's checkpoints/ folder"
            )
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch[1]))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        if batch[0].numel() == 0:
            return
        loss, probs, positive = self._step(batch, self.val_metrics)
        self._val_probs.append(probs)
        self._val_targets.append(positive)
        self._val_losses.append(loss.detach())
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch[1]))
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=False)

    def on_validation_epoch_end(self) -> None:
        if self._val_probs and not self.trainer.sanity_checking:
            self._validated_epoch = self.current_epoch
            # Checked before anything is saved: a diverged epoch must not become best.ckpt.
            self._stop_if_diverged("validation loss", torch.stack(self._val_losses))
            self._stop_if_diverged("weights", *self.net.state_dict().values())
            probs, targets = torch.cat(self._val_probs), torch.cat(self._val_targets)
            self.val_predictions = (probs.cpu(), targets.cpu())
            self.threshold = choose_threshold(
                probs, targets, self.hparams.threshold_method, self.hparams.target_sensitivity
            )
            self._stop_if_diverged("decision threshold", torch.tensor(self.threshold))
            self.log("val/threshold", self.threshold)
        self._val_probs.clear()
        self._val_targets.clear()
        self._val_losses.clear()

    def _stop_if_diverged(self, what: str, *tensors: torch.Tensor) -> None:
        """Stop the run, in one line, when ``tensors`` hold NaN or inf."""
        if all(bool(torch.isfinite(t).all()) for t in tensors):
            return
        raise PneumoError(
            f"the {what} became non-finite (NaN or inf) at epoch {self.current_epoch}: training "
            "diverged; lower the learning rate (model.optimizer.lr). This epoch was not saved; "
            "checkpoints of earlier epochs stay in the run's checkpoints/ folder"
        )

    def configure_optimizers(self):
        if not self.hparams.optimizer:
            raise PneumoError("model.optimizer is not set (see conf/model/resnet18.yaml)")
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        schedule = {"scheduler": scheduler, "monitor": self.hparams.monitor}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        # Lightning would step the schedule after the epoch's checkpoints are written, so
        # last.ckpt would hold the previous epoch's schedule; on_train_epoch_end steps it instead.
        return None

    def on_train_epoch_end(self) -> None:
        """Step the learning-rate schedule once per epoch, before the epoch's checkpoints.

        Checkpoint callbacks save at train-epoch end after this hook, so ``last.ckpt`` holds
        the learning rate of the next epoch and a resumed run continues exactly.
        """
        for config in self.trainer.lr_scheduler_configs:
            if not isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                config.scheduler.step()
                continue
            if self._validated_epoch != self.current_epoch:
                continue  # no validation this epoch (check_val_every_n_epoch): nothing new to follow
            metric = self.trainer.callback_metrics.get(config.monitor)
            if metric is None:
                raise PneumoError(
                    f"model.scheduler ReduceLROnPlateau follows {config.monitor}, which validation did "
                    "not log; monitor a logged metric (monitor.metric) or use model/scheduler=cosine"
                )
            config.scheduler.step(metric)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Everything needed to use the file alone later, as plain data.
        if self.meta is None:
            raise PneumoError("the model has no run metadata to save; build it with pneumo.train.build")
        checkpoint["pneumo"] = replace(self.meta, threshold=float(self.threshold)).as_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.meta = read_meta(checkpoint, "the checkpoint")
        self.threshold = self.meta.threshold
