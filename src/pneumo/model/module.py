"""The LightningModule: a network's loss, training and validation steps, and their metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torch._dynamo.exc import BackendCompilerFailed
from torchmetrics.aggregation import CatMetric, MeanMetric

from pneumo.errors import PneumoError
from pneumo.model.calibration import calibration_report, fit_temperature
from pneumo.model.metrics import FIGURES, classification_metrics, logged_name, metrics_at
from pneumo.model.mixup import Mix, mix_batch
from pneumo.model.network import compile_backend, compile_network, positive_probability
from pneumo.model.threshold import PLATEAU_TOLERANCE, choose_threshold

# torchmetrics' aggregators drop NaN by default; "replace NaN by NaN" keeps it, so a diverged
# epoch shows (their "disable" would too, but makes MeanMetric ignore its weights).
_KEEP_NAN = float("nan")


class XrayClassifier(L.LightningModule):
    """Train ``net`` (two class logits per film) to sort films; ``positive_index`` is the
    positive class's column.

    ``optimizer`` and ``scheduler`` are Hydra configs with ``_partial_: true``, kept as plain
    dicts (so checkpoints load with ``weights_only=True``) and instantiated in
    ``configure_optimizers``. After every validation epoch a temperature is fitted on that
    epoch's films (``temperature``: the probabilities pneumo serves are ``softmax(logits / T)``)
    and the decision threshold chosen on the calibrated probabilities by ``threshold_method``
    (``threshold``); the callback ``CheckpointMetadata`` writes both into each checkpoint.
    Figures at 0.5 are logged as ``*/at_0.5/*``, those at the chosen threshold as
    ``val/at_threshold/*``.

    Every epoch figure covers all films of all processes (DDP): losses and metrics are
    torchmetrics states reduced across processes, and the threshold is chosen on the
    validation predictions gathered from every process.

    The arguments are taken as given: pneumo-train's settings are checked before the module is
    built (``pneumo.training.settings``).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        positive_index: int = 1,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        threshold_method: str = "youden",
        target_sensitivity: float = 0.95,
        plateau_tolerance: float = PLATEAU_TOLERANCE,
        seed: int = 0,
        monitor: str = "val/loss",
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        self._compile_backend = compile_backend(compile)
        self.save_hyperparameters(ignore=["net"], logger=False)  # kept in every checkpoint
        self.net = net
        self.optimizer_config, self.scheduler_config = optimizer, scheduler
        self.positive_index, self.seed, self.monitor = positive_index, seed, monitor
        self.label_smoothing, self.mixup_alpha = label_smoothing, mixup_alpha
        self.threshold_method, self.target_sensitivity = threshold_method, target_sensitivity
        self.plateau_tolerance = plateau_tolerance
        self.compile_setting = compile
        # A plain tensor, not a buffer: weight averaging averages and swaps every buffer
        self.class_weights = torch.tensor(class_weights or [1.0, 1.0], dtype=torch.float32)
        self.train_metrics = classification_metrics()
        self.val_metrics = classification_metrics()
        # An epoch's loss is the class-weighted mean over its films: each batch's mean counts
        # by the sum of its films' class weights
        self.train_loss = MeanMetric(nan_strategy=_KEEP_NAN)
        self.val_loss = MeanMetric(nan_strategy=_KEEP_NAN)
        self._val_logits = CatMetric(nan_strategy=_KEEP_NAN)
        self._val_positive = CatMetric(nan_strategy=_KEEP_NAN)
        self.threshold = 0.5
        self.temperature = 1.0  # calibration: logits are divided by it before the softmax
        # (calibrated P(positive), is positive) of the last validation epoch, every process's films
        self.val_predictions: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a normalised ``N x 3 x H x W`` batch."""
        try:
            return self.net(x)
        except BackendCompilerFailed as err:
            # compilation runs on the first batch; its error is pages of compiler internals
            cause = str(getattr(err, "inner_exception", None) or err).strip().splitlines()
            raise PneumoError(
                f"model.compile={self.compile_setting!r}: compiling the network failed "
                f"({cause[0] if cause else type(err).__name__}); use model.compile=false to "
                "train without compiling"
            ) from err

    def configure_model(self) -> None:
        """Compile the network when ``model.compile`` asks for it, once the Trainer runs."""
        if self._compile_backend:
            compile_network(self.net, self._compile_backend)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, mix: Mix | None) -> torch.Tensor:
        """The class-weighted, label-smoothed mean cross-entropy; a mixup batch's against both labels."""

        def cross_entropy(labels: torch.Tensor) -> torch.Tensor:
            weight = self.class_weights.to(logits.device)
            return F.cross_entropy(logits, labels, weight=weight, label_smoothing=self.label_smoothing)

        if mix is None:
            return cross_entropy(targets)
        return mix.lam * cross_entropy(mix.targets_a) + (1.0 - mix.lam) * cross_entropy(mix.targets_b)

    def _step(self, images: torch.Tensor, targets: torch.Tensor, stage: str, mix: Mix | None = None):
        """Score a batch, add it to ``stage``'s loss and metrics; return the loss and the logits."""
        logits = self(images).float()  # fp32 under bf16 autocast too: loss and probabilities
        loss = self._loss(logits, targets, mix)
        # the batch counts by its films' class weights (a mixed batch's are the same sum)
        epoch_loss = self.train_loss if stage == "train" else self.val_loss
        epoch_loss.update(loss.detach(), self.class_weights.to(targets.device)[targets].sum())
        labels = targets if mix is None else mix.major  # under mixup: the label with the larger share
        probs = positive_probability(logits.detach(), self.positive_index)
        metrics = self.train_metrics if stage == "train" else self.val_metrics
        metrics.update(probs, (labels == self.positive_index).long())
        self.log(f"{stage}/loss", epoch_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict({logged_name(stage, k): m for k, m in metrics.items()}, on_step=False, on_epoch=True)
        return loss, logits.detach()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        images, targets = batch
        if images.numel() == 0:
            return None  # every film of the batch was skipped as unreadable
        rng = np.random.default_rng([self.seed % 2**63, self.current_epoch, batch_idx])
        images, mix = mix_batch(images, targets, self.mixup_alpha, rng)
        loss, _ = self._step(images, targets, "train", mix)
        if not torch.isfinite(loss):
            raise PneumoError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step}; lower the learning rate (model.optimizer.lr). The last good "
                "checkpoint is kept in the run's checkpoints/ folder"
            )
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, targets = batch
        if images.numel() == 0:
            return
        # in float32 under any *-mixed precision: the threshold is chosen on what serving computes
        with torch.autocast(images.device.type, enabled=False):
            _, logits = self._step(images, targets, "val")
        self._val_logits.update(logits)
        self._val_positive.update((targets == self.positive_index).long())

    def on_validation_epoch_end(self) -> None:
        """Check the epoch for divergence, then calibrate and choose the threshold on every
        process's films (each ``compute`` gathers from all, so every process stores the same)."""
        if self.trainer.sanity_checking:
            return self._reset_validation()
        self._log_epoch_axis()
        logits, positive = self._val_logits.compute(), self._val_positive.compute()
        self._reset_validation()
        if not isinstance(logits, torch.Tensor) or logits.numel() == 0:
            return None  # no film was validated (all skipped as unreadable)
        # before anything is saved: a diverged epoch must not become best.ckpt
        self._stop_if_diverged("validation loss", self.val_loss.compute())
        self._stop_if_diverged("weights", *self.net.state_dict().values())
        positive = positive.long()
        # the probabilities serving will give: calibrated as pneumo-predict calibrates them
        margins = logits[:, self.positive_index] - logits[:, 1 - self.positive_index]
        self.temperature = fit_temperature(margins, positive)
        probs = positive_probability(logits, self.positive_index, self.temperature)
        self.val_predictions = (probs.cpu(), positive.cpu())
        self.threshold = choose_threshold(
            probs, positive, self.threshold_method, self.target_sensitivity, self.plateau_tolerance
        )
        self._stop_if_diverged("decision threshold", torch.tensor(self.threshold))
        figures = metrics_at(probs, positive, self.threshold)
        # the same on every process; "max" passes each through the reduction unchanged
        self.log("val/threshold", self.threshold, sync_dist=True, reduce_fx="max")
        self.log("val/temperature", self.temperature, sync_dist=True, reduce_fx="max")
        self.log("val/ece", calibration_report(probs, positive)["ece"], sync_dist=True, reduce_fx="max")
        for name in FIGURES:
            self.log(f"val/at_threshold/{name}", figures[name], sync_dist=True, reduce_fx="max")
        return None

    def on_train_epoch_end(self) -> None:
        self._log_epoch_axis()

    def _log_epoch_axis(self) -> None:
        """Log the epoch's figures at x = the epoch number in every tracker: Lightning takes a
        figure named ``step`` as the x value of the figures it logs with it, instead of the
        global step, so runs of different batch sizes line up epoch by epoch."""
        self.log("step", float(self.current_epoch), on_step=False, on_epoch=True, reduce_fx="max")

    def _reset_validation(self) -> None:
        self._val_logits.reset()
        self._val_positive.reset()

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
        if not self.optimizer_config:
            raise PneumoError("model.optimizer is not set (see conf/model/resnet18.yaml)")
        optimizer = instantiate(self.optimizer_config)(params=self.parameters())
        optimizer.register_load_state_dict_post_hook(_keep_configured_kernel)
        if not self.scheduler_config:
            return optimizer
        scheduler = instantiate(self.scheduler_config)(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor},
        }


def _keep_configured_kernel(optimizer: torch.optim.Optimizer) -> None:
    """After a resume restored ``optimizer``'s state: run the kernel the config asks for
    (``model.optimizer.fused``, ``foreach``), not the one the checkpoint was saved with, which
    ``load_state_dict`` copies into every parameter group. The update is the same either way."""
    for group in optimizer.param_groups:
        for key in ("fused", "foreach"):
            if key in optimizer.defaults:
                group[key] = optimizer.defaults[key]
        # the fused kernel keeps each step count on its parameter's device, the loop on the CPU
        on_device = bool(group.get("fused") or group.get("capturable"))
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if torch.is_tensor(state.get("step")):
                device = param.device if on_device else torch.device("cpu")
                state["step"] = state["step"].to(device=device, dtype=torch.float32)
