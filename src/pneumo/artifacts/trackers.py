"""Trackers (Lightning's loggers, ``conf/logger/``): what a run records in each once it has ended,
where to look at it, and a one-line error for a tracker whose package is not installed.

Every figure the model and the callbacks log during training (``val/auroc``, ``val/loss``, ...,
one value an epoch) reaches every tracker through Lightning. At the end of the run
``record_run`` adds what only the run as a whole knows: its settings and its best epoch's
figures, the same for every tracker but in the form each one shows.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from pneumo.errors import PneumoError

# A logger class (the last part of its _target_) -> the package it needs and the extra of
# pneumo that installs it.
NEEDS = {"MLFlowLogger": ("mlflow", "mlflow"), "WandbLogger": ("wandb", "wandb")}


def require_packages(loggers: Mapping[str, Any] | None) -> None:
    """Stop with one line naming the extra to install when a configured tracker's package is
    missing (Lightning's loggers raise it from their constructor, inside Hydra's many-line error)."""
    for name, node in (loggers or {}).items():
        target = str(node.get("_target_", "")) if isinstance(node, Mapping) else ""
        needed = NEEDS.get(target.rpartition(".")[2])
        if needed is None:
            continue
        package, extra = needed
        try:
            importlib.import_module(package)
        except ImportError as err:
            raise PneumoError(
                f"logger.{name} ({target}) needs the {package} package: pip install 'pneumo[{extra}]' ({err})"
            ) from None


def record_run(
    loggers: Sequence[Logger], hparams: dict[str, Any], results: Mapping[str, float], step: int
) -> None:
    """Record the run's settings (``hparams``) and its figures (``results``) in every tracker.

    TensorBoard gets them as its HPARAMS tab pairs them: the settings with the last epoch's
    (``hp/val_*``) and the best epoch's (``hp/best_*``) figures. The other trackers get the
    settings as parameters and the best epoch's figures under their own names (``best/val/loss``,
    as pneumo-train returns them) as metrics at ``step``, the run's last; the last epoch's are
    already their metric histories' last values. Each is then written out (CSV: metrics.csv and
    hparams.yaml), and a W&B run is finished, so that the next run of this process (a sweep job,
    a search trial) gets its own instead of continuing this one.
    """
    figures = {k: v for k, v in results.items() if k.startswith(("val/", "best/"))}
    best = {k: v for k, v in figures.items() if k.startswith("best/")}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams, {f"hp/{k.replace('/', '_')}": v for k, v in figures.items()})
            continue
        logger.log_hyperparams(hparams)
        if best:
            logger.log_metrics(best, step=step)
        logger.save()
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def where(loggers: Iterable[Logger], output_dir: Path) -> list[str]:
    """One line a tracker: where it recorded the run, and how to look at it."""
    lines = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            lines.append(f"TensorBoard: tensorboard --logdir {output_dir}")
        elif isinstance(logger, CSVLogger):
            lines.append(f"CSV: {Path(logger.log_dir) / 'metrics.csv'}")
        elif isinstance(logger, MLFlowLogger):
            uri = logger.experiment.tracking_uri
            lines.append(f"MLflow: mlflow ui --backend-store-uri {uri}  (run {logger.run_id})")
        elif isinstance(logger, WandbLogger):
            lines.append(
                f"W&B: {Path(str(logger.save_dir)) / 'wandb'}  (an offline run: wandb sync its folder)"
            )
    return lines
