"""The LightningModule: the network's loss, metrics, threshold and optimiser hooks."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch._dynamo.exc import BackendCompilerFailed
from torchmetrics.aggregation import CatMetric, MeanMetric

from pneumo.checkpoint import CheckpointMeta, read_meta
from pneumo.errors import PneumoError
from pneumo.metrics import classification_metrics
from pneumo.network import (
    NUM_CLASSES,
    build_resnet18,
    compile_backend,
    compile_network,
    load_backbone_weights,
    positive_probability,
)
from pneumo.threshold import THRESHOLD_METHODS, choose_threshold

log = logging.getLogger(__name__)

# torchmetrics' aggregators drop NaN by default; "replace NaN by NaN" keeps it (their "disable"
# would too, but makes MeanMetric ignore its weights).
_KEEP_NAN = float("nan")


class Mix(NamedTuple):
    """The labels of a mixup batch: each image is ``lam`` of a film labelled ``targets_a`` and
    ``1 - lam`` of one labelled ``targets_b``."""

    targets_a: torch.Tensor
    targets_b: torch.Tensor
    lam: float

    @property
    def major(self) -> torch.Tensor:
        """Each image's label with the larger share."""
        return self.targets_a if self.lam >= 0.5 else self.targets_b


def mix_batch(
    images: torch.Tensor, targets: torch.Tensor, alpha: float, rng: np.random.Generator
) -> tuple[torch.Tensor, Mix | None]:
    """Mixup (Zhang et al. 2018): blend the batch with a shuffled copy of itself by one share
    ``lam ~ Beta(alpha, alpha)``. ``alpha == 0`` leaves the batch as it is (no ``Mix``).

    ``lam`` and the shuffle come from ``rng`` alone, which training seeds with the run's seed,
    the epoch and the batch: a resumed run continues the draws, and every device draws the same.
    """
    if alpha == 0:
        return images, None
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(len(images))).to(images.device)
    # a Python float keeps the images' dtype and channels_last layout
    mixed = lam * images + (1.0 - lam) * images[perm]
    return mixed, Mix(targets, targets[perm], lam)


class XrayClassifier(L.LightningModule):
    """ResNet18 sorting films into two classes; ``positive_index`` is the positive one's column
    (``data.positive_class``'s place in ``data.classes``, set by ``pneumo.train.build``).

    ``optimizer`` and ``scheduler`` are Hydra configs with ``_partial_: true``, kept as plain
    dicts (so checkpoints load with ``weights_only=True``) and instantiated in
    ``configure_optimizers``. After every validation epoch the decision threshold is chosen
    on that epoch's validation predictions, so each checkpoint carries its own.

    Every epoch figure covers all films of all processes (DDP): the losses and metrics are
    torchmetrics states reduced across processes, and the threshold is chosen on the
    validation predictions gathered from every process. The validation loader gives each
    film to exactly one process (``XrayDataModule.val_dataloader``), so none counts twice.
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
        compile: bool | str = False,
        mixup_alpha: float = 0.0,
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
        if not mixup_alpha >= 0.0:
            raise PneumoError(f"model.mixup_alpha={mixup_alpha} is not valid: use 0 (off) or more")
        self._compile_backend = compile_backend(compile)
        self.save_hyperparameters(logger=False)
        self.net = build_resnet18(NUM_CLASSES)
        if weights:
            load_backbone_weights(self.net, weights)
        self.net = self.net.to(memory_format=torch.channels_last)
        self.train_metrics = classification_metrics("train/")
        self.val_metrics = classification_metrics("val/")
        # An epoch's loss is the class-weighted mean over its films, whatever the batches:
        # each batch's mean counts by the sum of its films' class weights. NaN is kept, so a
        # diverged validation epoch is caught (see on_validation_epoch_end).
        self.train_loss = MeanMetric(nan_strategy=_KEEP_NAN)
        self.val_loss = MeanMetric(nan_strategy=_KEEP_NAN)
        # this epoch's validation predictions, gathered from every process for the threshold
        self._val_probs = CatMetric(nan_strategy=_KEEP_NAN)
        self._val_positive = CatMetric(nan_strategy=_KEEP_NAN)
        # A plain tensor, not a buffer: weight averaging (callbacks.weight_averaging) averages
        # and swaps every buffer, and would validate a resumed run with weights drifting back
        # from the averaged copy's ones. Moved to the batch's device where it is used.
        self.class_weights = torch.ones(NUM_CLASSES)
        self.threshold = 0.5
        self._seed = 0  # data.seed, read at fit start: it fixes each batch's mixup draws
        # (P(positive), is positive) of the last validation epoch, every process's films
        self.val_predictions: tuple[torch.Tensor, torch.Tensor] | None = None
        self._validated_epoch = -1  # a plateau schedule steps only on a fresh val/loss
        # set by pneumo.train.build, or restored from a checkpoint; saved with every checkpoint
        self.meta: CheckpointMeta | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a normalised ``N x 3 x H x W`` batch."""
        try:
            return self.net(x)
        except BackendCompilerFailed as err:
            # compilation runs on the first batch; its error is pages of compiler internals
            cause = str(getattr(err, "inner_exception", None) or err).strip().splitlines()
            raise PneumoError(
                f"model.compile={self.hparams.compile!r}: compiling the network failed "
                f"({cause[0] if cause else type(err).__name__}); use model.compile=false to "
                "train without compiling"
            ) from err

    def configure_model(self) -> None:
        """Compile the network when ``model.compile`` asks for it, once the Trainer runs."""
        if self._compile_backend:
            compile_network(self.net, self._compile_backend)

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        self._seed = datamodule.seed if datamodule is not None else 0
        weights = datamodule.class_weights() if datamodule is not None else None
        if weights is not None:
            self.class_weights = weights.to(self.device)
            log.info("class-weighted loss: %s", [round(w, 3) for w in weights.tolist()])

    def _cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The class-weighted, label-smoothed mean cross-entropy of a batch."""
        return F.cross_entropy(
            logits,
            targets,
            weight=self.class_weights.to(logits.device),
            label_smoothing=self.hparams.label_smoothing,
        )

    def _step(
        self,
        batch: tuple[torch.Tensor, torch.Tensor],
        metrics,
        epoch_loss: MeanMetric,
        mix: Mix | None = None,
    ):
        """Score a batch and add it to the epoch's loss and metrics; ``mix``: its images are
        mixup blends, scored against both labels of each (training only)."""
        images, targets = batch
        # fp32 under bf16 autocast too: loss, probabilities and threshold at full precision
        logits = self(images).float()
        loss = self._cross_entropy(logits, targets)
        if mix is not None:
            # two class-weighted means with shares summing to 1: on the scale of the unmixed loss
            loss = mix.lam * loss + (1.0 - mix.lam) * self._cross_entropy(logits, mix.targets_b)
        # The batch counts by its films' class weights. A mixed batch's would be
        # lam * w[targets_a].sum() + (1 - lam) * w[targets_b].sum(): the same sum, as targets_b
        # is targets_a shuffled.
        epoch_loss.update(loss.detach(), self.class_weights.to(targets.device)[targets].sum())
        if mix is not None:
            targets = mix.major  # train metrics under mixup: against the label with the larger share
        probs = positive_probability(logits.detach(), self.hparams.positive_index)
        positive = (targets == self.hparams.positive_index).long()
        metrics.update(probs, positive)
        return loss, probs, positive

    def training_step(self, batch, batch_idx):
        if batch[0].numel() == 0:
            return None
        images, targets = batch
        if self.hparams.mixup_alpha > 0:
            rng = np.random.default_rng([self._seed % 2**63, self.current_epoch, batch_idx])
            images, mix = mix_batch(images, targets, self.hparams.mixup_alpha, rng)
        else:
            mix = None
        loss, _, _ = self._step((images, targets), self.train_metrics, self.train_loss, mix)
        if not torch.isfinite(loss):
            raise PneumoError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step}; lower the learning rate (model.optimizer.lr). The last good "
                "checkpoint is kept in the run's checkpoints/ folder"
            )
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        if batch[0].numel() == 0:
            return
        # in float32 under any trainer.precision=*-mixed: the threshold is chosen on the
        # probabilities that pneumo-eval, pneumo-predict and the exports compute
        with torch.autocast(batch[0].device.type, enabled=False):
            _, probs, positive = self._step(batch, self.val_metrics, self.val_loss)
        self._val_probs.update(probs)
        self._val_positive.update(positive)
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=False)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._end_validation_epoch()
        self._val_probs.reset()
        self._val_positive.reset()

    def _end_validation_epoch(self) -> None:
        """Check the epoch for divergence and choose its threshold on every process's films.

        Every process calls this: each ``compute`` gathers from all of them, so all see the
        same figures, stop together on a diverged epoch and store the same threshold.
        """
        probs, positive = self._val_probs.compute(), self._val_positive.compute()
        if not isinstance(probs, torch.Tensor) or probs.numel() == 0:
            return  # no film was validated (all skipped as unreadable)
        self._validated_epoch = self.current_epoch
        # Checked before anything is saved: a diverged epoch must not become best.ckpt.
        self._stop_if_diverged("validation loss", self.val_loss.compute())
        self._stop_if_diverged("weights", *self.net.state_dict().values())
        positive = positive.long()
        self.val_predictions = (probs.cpu(), positive.cpu())
        self.threshold = choose_threshold(
            probs, positive, self.hparams.threshold_method, self.hparams.target_sensitivity
        )
        self._stop_if_diverged("decision threshold", torch.tensor(self.threshold))
        # the same on every process; "max" passes it through the reduction unchanged
        self.log("val/threshold", self.threshold, sync_dist=True, reduce_fx="max")

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
