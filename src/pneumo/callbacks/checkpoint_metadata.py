"""Every checkpoint describes itself: the run's ``CheckpointMeta`` with the epoch's threshold."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import lightning as L

from pneumo.artifacts.checkpoint import CheckpointMeta, read_meta


class CheckpointMetadata(L.Callback):
    """Write ``meta``, with the threshold the module chose on its last validation, under
    ``checkpoint["pneumo"]`` of every checkpoint; on resume, restore that threshold, so a file
    saved before the next validation (Ctrl-C) still carries it.

    The training entry point adds it to every run (``pneumo.cli.train.build``): evaluation,
    prediction and export need nothing but the file.
    """

    def __init__(self, meta: CheckpointMeta) -> None:
        self.meta = meta

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["pneumo"] = replace(self.meta, threshold=float(pl_module.threshold)).as_dict()

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        pl_module.threshold = read_meta(checkpoint, "the checkpoint").threshold
