"""Every checkpoint describes itself: the run's ``CheckpointMeta`` with the epoch's threshold."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import lightning as L

from pneumo.artifacts.checkpoint import CheckpointMeta, read_meta
from pneumo.errors import PneumoError


class CheckpointMetadata(L.Callback):
    """Write ``meta``, with the threshold and calibration the module chose on its last
    validation, under ``checkpoint["pneumo"]`` of every checkpoint; on resume, restore them, so
    a file saved before the next validation (Ctrl-C) still carries them.

    Training adds it to every run (``pneumo.training.build.build``): evaluation,
    prediction and export need nothing but the file.
    """

    def __init__(self, meta: CheckpointMeta) -> None:
        self.meta = meta

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning leaves callbacks out of weights-only checkpoints: such a file would carry no
        # metadata, and pneumo-eval, -predict and -export would refuse it
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "save_weights_only", False):
                raise PneumoError(
                    "callbacks.model_checkpoint.save_weights_only=true writes checkpoints without pneumo's "
                    "metadata (classes, preprocessing, threshold, calibration), which evaluation, prediction "
                    "and export need; leave it false"
                )

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # XrayClassifier keeps both as floats, chosen on its last validation
        threshold = float(pl_module.threshold)  # type: ignore[arg-type]
        temperature = float(pl_module.temperature)  # type: ignore[arg-type]
        calibration = {"method": "temperature", "temperature": temperature, "fitted_on": "validation"}
        checkpoint["pneumo"] = replace(self.meta, threshold=threshold, calibration=calibration).as_dict()

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        meta = read_meta(checkpoint, "the checkpoint")
        # a resumed run goes on describing itself as the run it continues (whose split and
        # training files the resume was checked against), made by the code and packages at hand
        self.meta = replace(meta, versions=self.meta.versions)
        # any LightningModule that chooses a threshold (XrayClassifier) keeps these as floats
        pl_module.threshold = meta.threshold  # type: ignore[assignment]
        pl_module.temperature = meta.temperature  # type: ignore[assignment]
