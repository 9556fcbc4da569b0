"""The LightningModule: a torchvision ResNet18 with a 2-class head, its loss and metrics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from hydra.utils import instantiate
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from pneumo.errors import PneumoError
from pneumo.threshold import choose_threshold, is_positive

log = logging.getLogger(__name__)


def build_resnet18(num_classes: int) -> nn.Module:
    """An untrained torchvision ResNet18 whose last layer has ``num_classes`` outputs."""
    net = resnet18(weights=None)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


def _imagenet_state_dict(weights: str) -> dict[str, torch.Tensor]:
    """ImageNet weights by torchvision name (downloaded once) or from a local file."""
    if Path(weights).suffix in (".pth", ".pt", ".ckpt", ".bin") or Path(weights).exists():
        path = Path(weights).expanduser()
        if not path.is_file():
            raise PneumoError(f"model.weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise PneumoError(f"model.weights file {path} is not a PyTorch state dict: {err}") from err
        return state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        enum = ResNet18_Weights[weights]
    except KeyError:
        names = ", ".join(w.name for w in ResNet18_Weights)
        raise PneumoError(
            f"model.weights={weights!r} is neither a file nor a torchvision weight name ({names}); "
            "use null to train from scratch"
        ) from None
    try:
        return enum.get_state_dict(progress=False)
    except Exception as err:
        file_name = Path(enum.url).name
        raise PneumoError(
            f"could not download the {weights} weights ({type(err).__name__}: {err}). Without "
            f"network, copy {file_name} from {enum.url} to ~/.cache/torch/hub/checkpoints/ "
            f"or pass model.weights=/path/to/{file_name}; or train from scratch with "
            "model.weights=null"
        ) from err


def load_backbone_weights(net: nn.Module, weights: str) -> None:
    """Load pretrained ResNet18 weights into ``net``, all layers but the classifier head."""
    state = _imagenet_state_dict(weights)
    state = {k.removeprefix("net.").removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise PneumoError(
            f"model.weights={weights} does not fit a ResNet18: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


# Training and validation figures other than AUROC are logged at this threshold.
METRICS_THRESHOLD = 0.5


def _metrics(prefix: str) -> torchmetrics.MetricCollection:
    """Accuracy, AUROC, sensitivity (pneumonia recall), specificity and F1 on P(pneumonia)."""
    from torchmetrics import classification as C

    return torchmetrics.MetricCollection(
        {
            "acc": C.BinaryAccuracy(),
            "auroc": C.BinaryAUROC(),
            "sensitivity": C.BinaryRecall(),
            "specificity": C.BinarySpecificity(),
            "f1": C.BinaryF1Score(),
        },
        prefix=prefix,
        compute_groups=False,  # members are updated one by one in update_metrics
    )


def update_metrics(
    metrics: torchmetrics.MetricCollection, probs: torch.Tensor, targets: torch.Tensor
) -> None:
    """AUROC ranks the probabilities; the others count labels decided by ``is_positive``.

    torchmetrics would threshold with ``p > 0.5``; handing it labels keeps training figures
    on the same rule as pneumo-eval and pneumo-predict.
    """
    labels = is_positive(probs, METRICS_THRESHOLD).long()
    for name, metric in metrics.items(keep_base=True):
        metric.update(probs if name == "auroc" else labels, targets)


class XrayClassifier(L.LightningModule):
    """ResNet18 classifying NORMAL (0) vs PNEUMONIA (1).

    ``optimizer`` and ``scheduler`` are Hydra configs with ``_partial_: true``, kept as plain
    dicts (so checkpoints load with ``weights_only=True``) and instantiated in
    ``configure_optimizers``. After every validation epoch the decision threshold is chosen
    on that epoch's validation predictions, so each checkpoint carries its own.
    """

    def __init__(
        self,
        weights: str | None = "IMAGENET1K_V1",
        num_classes: int = 2,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        threshold_method: str = "youden",
        target_sensitivity: float = 0.95,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = build_resnet18(num_classes)
        if weights:
            load_backbone_weights(self.net, weights)
        self.net = self.net.to(memory_format=torch.channels_last)
        self.train_metrics = _metrics("train/")
        self.val_metrics = _metrics("val/")
        self.register_buffer("class_weights", torch.ones(num_classes), persistent=False)
        self.threshold = 0.5
        self._val_probs: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []
        self._val_losses: list[torch.Tensor] = []
        self.pneumo_meta: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a normalised ``N x 3 x H x W`` batch."""
        return self.net(x)

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        weights = datamodule.class_weights() if datamodule is not None else None
        if weights is not None:
            self.class_weights = weights.to(self.device)
            log.info("class-weighted loss: %s", [round(w, 3) for w in weights.tolist()])

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: torchmetrics.MetricCollection):
        images, targets = batch
        logits = self(images)
        loss = F.cross_entropy(
            logits, targets, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing
        )
        probs = logits.detach().softmax(dim=1)[:, 1]
        update_metrics(metrics, probs, targets)
        return loss, probs

    def training_step(self, batch, batch_idx):
        if batch[0].numel() == 0:
            return None
        loss, _ = self._step(batch, self.train_metrics)
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
        loss, probs = self._step(batch, self.val_metrics)
        self._val_probs.append(probs)
        self._val_targets.append(batch[1])
        self._val_losses.append(loss.detach())
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch[1]))
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=False)

    def on_validation_epoch_end(self) -> None:
        if self._val_probs and not self.trainer.sanity_checking:
            # Checked before anything is saved: a diverged epoch must not become best.ckpt.
            self._stop_if_diverged("validation loss", torch.stack(self._val_losses))
            self._stop_if_diverged("weights", *self.net.state_dict().values())
            probs, targets = torch.cat(self._val_probs), torch.cat(self._val_targets)
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
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}

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
            metric = self.trainer.callback_metrics.get(config.monitor)
            if metric is None:
                raise PneumoError(
                    f"model.scheduler ReduceLROnPlateau follows {config.monitor}, which no validation "
                    "logged this epoch; keep validation on (trainer.limit_val_batches, "
                    "trainer.check_val_every_n_epoch) or use model/scheduler=cosine"
                )
            config.scheduler.step(metric)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Everything needed to use the file alone later, as plain data.
        checkpoint["pneumo"] = {**self.pneumo_meta, "threshold": float(self.threshold)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("pneumo", {})
        self.threshold = float(meta.get("threshold", 0.5))
        self.pneumo_meta = {k: v for k, v in meta.items() if k != "threshold"}
