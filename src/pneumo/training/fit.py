"""Fit a composed run: hold its directory, check a resume against its checkpoint, give the
trackers the run's identity, train, record and report the best figures."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from pneumo import DISCLAIMER
from pneumo.artifacts.checkpoint import (
    CheckpointMeta,
    network_state_dict,
    read_checkpoint,
    read_meta,
    refuse_diverged,
)
from pneumo.artifacts.rundir import checkpoint_run_dir, claim_run_dir, launch_rank
from pneumo.artifacts.trackers import (
    finish_run,
    flat_params,
    open_stores,
    require_packages,
    start_run,
    where,
)
from pneumo.callbacks.checkpoint_metadata import CheckpointMetadata
from pneumo.callbacks.run_outcome import RunOutcome
from pneumo.data.provenance import check_resume
from pneumo.errors import PneumoError
from pneumo.training.build import build
from pneumo.training.config import instantiate_node, plain
from pneumo.training.settings import check_train_config

log = logging.getLogger(__name__)


def train(
    cfg: DictConfig,
    callbacks: Sequence[L.Callback] = (),
    one_process_only: bool = False,
    on_refused: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Fit the model described by ``cfg``; return the best validation figures.

    First every setting is checked (``check_train_config``); then, the films listed but none
    decoded, the validation split must be able to measure the model (``check_validation``; not
    under ``trainer.fast_dev_run``, a wiring check that measures nothing).

    The run directory is held for the length of the run (``claim_run_dir``): a directory
    holding another run, or being written by one, is refused. In a run of several processes
    (DDP) rank zero holds it for all. ``one_process_only`` refuses a config that would start
    more processes (see ``hydra_main``). ``on_refused`` is called when a check refuses the run,
    before the directory is held (the command removes the folder Hydra made for it).
    """
    ckpt_path = cfg.get("ckpt_path")
    try:
        check_train_config(cfg)
        if not cfg.trainer.get("fast_dev_run"):
            instantiate_node(cfg.data).check_validation()
        if ckpt_path and not Path(ckpt_path).is_file():
            raise PneumoError(f"ckpt_path not found: {ckpt_path}")
    except PneumoError:
        if on_refused is not None:
            on_refused()
        raise
    rank, _ = launch_rank()
    held = claim_run_dir(cfg.paths.output_dir, ckpt_path) if rank == 0 else contextlib.nullcontext()
    with held:
        return _fit(cfg, ckpt_path, callbacks, one_process_only)


def _fit(
    cfg: DictConfig, ckpt_path: str | None, callbacks: Sequence[L.Callback], one_process_only: bool
) -> dict[str, float]:
    """Build, check a resume against its checkpoint, train and report."""
    L.seed_everything(cfg.seed, workers=True)
    require_packages(cfg.get("logger"))  # logger=mlflow without MLflow: one line, not Hydra's
    open_stores(cfg.get("logger"))  # before the loggers connect: parallel jobs, one fresh store
    datamodule, model, trainer = build(cfg, [*callbacks, RunIdentity(cfg)])
    if one_process_only and trainer.world_size > 1:
        raise PneumoError(
            f"-m runs its jobs one after another in this process, and a run of {trainer.world_size} "
            "processes (trainer.devices, trainer.num_nodes) would start the whole sweep again in each; "
            "sweep with the cluster launcher instead: launcher=slurm (each job a SLURM job of that size)"
        )
    if ckpt_path:
        saved = read_checkpoint(ckpt_path)
        saved_meta = read_meta(saved, ckpt_path)
        check_resume(saved_meta, _run_meta(trainer), ckpt_path)
        refuse_diverged(ckpt_path, network_state_dict(saved), saved_meta.threshold)
        log.info("resuming from %s; the run continues in %s", ckpt_path, cfg.paths.output_dir)
        own = checkpoint_run_dir(ckpt_path)
        if own is None or own.resolve() != Path(cfg.paths.output_dir).resolve():
            log.warning(
                "%s is not a checkpoint of this run directory: best.ckpt here will be the best "
                "epoch since this resume only",
                ckpt_path,
            )
    log.info(DISCLAIMER)
    with warnings.catch_warnings():
        # claim_run_dir admits a used checkpoints/ folder only to the run that wrote it
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        # configure_model here only compiles (model.compile), it shards nothing
        warnings.filterwarnings("ignore", message=r"You're using the WeightAveraging callback with a model")
        # Lightning ends a run on a signal with SystemExit, having marked its trackers failed;
        # the stop line comes first then (cli.stopped), with no tracker to wait for
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return _record(cfg, trainer)


def _record(cfg: DictConfig, trainer: L.Trainer) -> dict[str, float]:
    """The run's last and best figures, given to every tracker (``finish_run``, which marks a
    run that ``trainer.max_time`` stopped short as such) and said with where the run and its
    best checkpoint are."""
    # "step" is the epoch axis the module logs (RunIdentity), not a figure
    results = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1 and k != "step"}
    checkpoint = trainer.checkpoint_callback
    if not isinstance(checkpoint, ModelCheckpoint):
        checkpoint = None
    if checkpoint is not None and checkpoint.best_model_score is not None:
        results[f"best/{cfg.monitor.metric}"] = float(checkpoint.best_model_score)
    output_dir = Path(cfg.paths.output_dir)
    outcome = next((c for c in trainer.callbacks if isinstance(c, RunOutcome)), None)  # type: ignore[attr-defined]
    stop = outcome.stop(output_dir) if outcome is not None else None
    finish_run(
        trainer.loggers,
        results,
        epoch=max(trainer.current_epoch - 1, 0),
        stopped=stop.describe(cfg.trainer.get("max_time")) if stop else None,
        exit_status=stop.exit_status if stop else 0,
    )
    log.info("run directory: %s", output_dir)
    if checkpoint is not None and checkpoint.best_model_path:
        log.info(
            "best checkpoint: %s (%s %.4f)",
            checkpoint.best_model_path,
            cfg.monitor.metric,
            results.get(f"best/{cfg.monitor.metric}", float("nan")),
        )
    for line in where(trainer.loggers, output_dir):
        log.info(line)
    return results


class RunIdentity(L.Callback):
    """When fit starts (after a resume has restored its checkpoint's metadata), give every
    tracker the run's whole resolved config as its parameters and ``config.yaml``
    (``start_run``), and every checkpoint from then on the ids of the tracker runs, which
    pneumo-eval joins. An interrupted or crashed run is thus as comparable as a finished one."""

    def __init__(self, cfg: DictConfig) -> None:
        self.params = flat_params(plain(cfg))
        self.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        monitor = str(cfg.monitor.metric)
        # TensorBoard's HPARAMS columns: the monitored figure, its best, and the operating point
        self.figures = list(
            dict.fromkeys([monitor, f"best/{monitor}", "val/auroc", "val/loss", *OPERATING_POINT])
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        ids = start_run(trainer.loggers, self.params, self.config_yaml, self.figures)
        # this run's trackers, or none: a resume without them must not point at the old run
        holder = next(c for c in trainer.callbacks if isinstance(c, CheckpointMetadata))  # type: ignore[attr-defined]
        holder.meta = replace(holder.meta, trackers=ids or None)


# the figures at the threshold the run ships
OPERATING_POINT = ("val/at_threshold/sensitivity", "val/at_threshold/specificity")


def _run_meta(trainer: L.Trainer) -> CheckpointMeta:
    """The metadata ``build`` gave the run's ``CheckpointMetadata`` callback."""
    callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]  # a property Lightning sets
    return next(c.meta for c in callbacks if isinstance(c, CheckpointMetadata))


def optimized_value(cfg: DictConfig, results: dict[str, float]) -> float | None:
    """The figure named by ``optimized_metric``, for sweepers; ``None`` (with a warning) when the
    run did not produce it, e.g. under ``debug=fast_dev_run``, which scores no checkpoint."""
    if cfg.optimized_metric not in results:
        log.warning(
            "optimized_metric=%s was not produced by this run (it logged %s)",
            cfg.optimized_metric,
            ", ".join(sorted(results)) or "nothing",
        )
        return None
    return results[cfg.optimized_metric]
