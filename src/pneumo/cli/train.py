"""pneumo-train: the Hydra entry point that trains the classifier.

pneumo-train experiment=quickstart
pneumo-train data.root=DATA data.batch_size=32 trainer.max_epochs=35
pneumo-train -m data.batch_size=8,16,32 trainer.max_epochs=5,10
pneumo-train trainer=ddp trainer.devices=4
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from pneumo import DISCLAIMER
from pneumo.artifacts.checkpoint import (
    CheckpointMeta,
    network_state_dict,
    read_checkpoint,
    read_meta,
    refuse_diverged,
)
from pneumo.artifacts.rundir import (
    checkpoint_run_dir,
    claim_run_dir,
    launch_rank,
    prepare_launch,
    requeued_resume,
)
from pneumo.artifacts.trackers import record_run, require_packages, where
from pneumo.callbacks.checkpoint_metadata import CheckpointMetadata
from pneumo.callbacks.interrupt import RunOutcome, end_run
from pneumo.callbacks.lr_stepping import EpochLRStep
from pneumo.cli.arguments import check_train_config, config_errors
from pneumo.data.datamodule import XrayDataModule
from pneumo.data.preprocess import preprocessing_spec
from pneumo.data.provenance import check_resume, files_fingerprint, record_files
from pneumo.errors import PneumoError, exit_on_user_error
from pneumo.hardware import auto_precision
from pneumo.model.module import XrayClassifier
from pneumo.model.network import resnet18_classifier

log = logging.getLogger(__name__)


def compose_config(overrides: list[str], output_dir: str | Path, config_name: str = "train") -> DictConfig:
    """Compose a config in code exactly as ``pneumo-train`` would, writing into ``output_dir``.

    For notebooks, tests and benchmarks: ``train(compose_config(["experiment=quickstart"], "runs/a"))``.
    """
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pneumo.conf", version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra  # the task function never sees it either
    return cfg


def _instantiate_dict(group: DictConfig | None) -> list[Any]:
    """Instantiate every non-null entry of a config group such as ``callbacks``."""
    return [_build(c) for c in (group or {}).values() if c is not None]


def _build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, letting a ``PneumoError`` from a constructor through as itself
    (Hydra would wrap it in a many-line ``InstantiationException``)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, PneumoError):
            raise err.__cause__ from None
        raise


def _flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The swept knobs (data, model, trainer, seed) flattened for TensorBoard's HPARAMS tab."""
    flat: dict[str, Any] = {"seed": cfg.seed}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in ("_target_", "_partial_"):
                    walk(f"{prefix}.{key}" if prefix else key, value)
        else:
            flat[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    for group in ("data", "model", "trainer"):
        walk(group, OmegaConf.to_container(cfg[group], resolve=True))
    return flat


def resolve_precision(cfg: DictConfig) -> None:
    """Replace ``trainer.precision=auto`` by what this machine trains fastest in (one log line);
    the resolved value is what the run's checkpoints record. A resume keeps the precision its
    checkpoint was trained in, so that it continues as it began. An explicit value is kept."""
    if str(cfg.trainer.get("precision")) != "auto":
        return
    ckpt_path = cfg.get("ckpt_path")
    saved = None
    if ckpt_path and Path(ckpt_path).is_file():
        config = read_meta(read_checkpoint(ckpt_path), ckpt_path).config
        saved = config.get("trainer", {}).get("precision")
    if saved is not None and str(saved) != "auto":
        precision, why = str(saved), f"as {ckpt_path} was trained"
    else:
        precision, why = auto_precision(str(cfg.trainer.get("accelerator", "auto")))
    with open_dict(cfg):
        cfg.trainer.precision = precision
    log.info("trainer.precision=auto: %s (%s)", precision, why)


def _plain(node: DictConfig) -> dict[str, Any]:
    """A config node as resolved plain data."""
    plain = OmegaConf.to_container(node, resolve=True)
    assert isinstance(plain, dict)  # a DictConfig's container is a dict
    return {str(k): v for k, v in plain.items()}


def run_metadata(datamodule: XrayDataModule, config: dict[str, Any]) -> CheckpointMeta:
    """The metadata every checkpoint of a run about to train on ``datamodule`` carries."""
    train_samples, val_samples = datamodule.split_samples()
    return CheckpointMeta(
        classes=list(datamodule.classes),
        positive_class=datamodule.positive_class,
        preprocessing=preprocessing_spec(datamodule.image_size),
        # file by file, so pneumo-eval data.split=val and a resume use exactly this split
        val_files=record_files(val_samples, datamodule.root, datamodule.classes),
        config=config,
        # a resume must train on the same films, which the validation files alone do not show
        train_files=files_fingerprint(train_samples, datamodule.root, datamodule.classes),
    )


def build(
    cfg: DictConfig, callbacks: Sequence[L.Callback] = ()
) -> tuple[XrayDataModule, XrayClassifier, L.Trainer]:
    """Create the DataModule, the network, the LightningModule and the Trainer from a composed
    config; ``callbacks`` join the config's (a search's trial pruning, which config cannot hold)."""
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and (max_epochs == 0 or max_epochs < -1):
        raise PneumoError(f"trainer.max_epochs={max_epochs} is not valid: use 1 or more (-1: no limit)")
    resolve_precision(cfg)
    datamodule: XrayDataModule = _build(cfg.data)
    datamodule.check_root()
    model_cfg = _plain(cfg.model)
    # model.weights chooses the network's starting weights; the module gets the network itself
    net = resnet18_classifier(model_cfg.pop("weights", None))
    weights = datamodule.class_weights()
    if weights is not None:
        log.info("class-weighted loss: %s", [round(w, 3) for w in weights.tolist()])
    model: XrayClassifier = _build(
        model_cfg,
        net=net,
        positive_index=datamodule.positive_index,
        class_weights=None if weights is None else weights.tolist(),
        seed=datamodule.seed,
        _recursive_=False,
        _convert_="all",
    )
    meta = run_metadata(datamodule, _plain(cfg))
    # what every run needs, whatever the config: self-describing checkpoints, an exact resume
    required = [CheckpointMetadata(meta), EpochLRStep()]
    trainer: L.Trainer = _build(
        cfg.trainer,
        callbacks=[*_instantiate_dict(cfg.get("callbacks")), *required, *callbacks],
        logger=_instantiate_dict(cfg.get("logger")) or False,
    )
    return datamodule, model, trainer


def train(
    cfg: DictConfig, callbacks: Sequence[L.Callback] = (), one_process_only: bool = False
) -> dict[str, float]:
    """Fit the model described by ``cfg``; return the best validation figures.

    The run directory is held for the length of the run (``claim_run_dir``): a directory
    holding another run, or being written by one, is refused. In a run of several processes
    (DDP) rank zero holds it for all. ``one_process_only`` refuses a config that would start
    more processes (see ``hydra_main``).
    """
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise PneumoError(f"ckpt_path not found: {ckpt_path}")
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
    datamodule, model, trainer = build(cfg, callbacks)
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
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    results = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    checkpoint = trainer.checkpoint_callback
    if not isinstance(checkpoint, ModelCheckpoint):
        checkpoint = None
    if checkpoint is not None and checkpoint.best_model_score is not None:
        results[f"best/{cfg.monitor.metric}"] = float(checkpoint.best_model_score)
    record_run(trainer.loggers, _flat_hparams(cfg), results, trainer.global_step)
    output_dir = Path(cfg.paths.output_dir)
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


@hydra.main(version_base="1.3", config_path="pkg://pneumo.conf", config_name="train")
@exit_on_user_error
@config_errors
def hydra_main(cfg: DictConfig) -> float | None:
    """Train; return ``optimized_metric`` for Hydra sweepers to optimise.

    Hydra's basic launcher runs ``-m`` jobs in this process, and Lightning's DDP launcher
    would start each further process with this whole command line, sweep included; such
    jobs must stay in one process.

    Before any film is decoded, every setting is checked (``check_train_config``) and the
    validation split must be able to measure the model (``check_validation``). Under SLURM the
    cluster environment requeues the job on SIGUSR1 only with ``slurm.requeue=true``. A run
    stopped before its schedule finished (Ctrl-C, SIGTERM, SIGUSR1, ``trainer.max_time``) says
    so in one line with the command that resumes it, and exits non-zero (``end_run``).
    """
    hydra_cfg = HydraConfig.get()
    in_process_sweep = hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.launcher._target_.endswith(
        ".BasicLauncher"
    )
    check_train_config(cfg)
    requeue = bool(OmegaConf.select(cfg, "slurm.requeue", default=False))
    if SLURMEnvironment.detect():
        if (
            requeue
            and hydra_cfg.mode == RunMode.RUN
            and not any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra)
        ):
            raise PneumoError(
                "slurm.requeue=true: a requeued job runs its command line again, so name the run's "
                "directory, e.g. hydra.run.dir=outputs/train/runs/$SLURM_JOB_ID, and it continues there"
            )
        plugins = list(cfg.trainer.get("plugins") or [])
        if not any(str(p.get("_target_", "")).endswith("SLURMEnvironment") for p in plugins):
            environment = "lightning.fabric.plugins.environments.SLURMEnvironment"
            with open_dict(cfg):
                cfg.trainer.plugins = [*plugins, {"_target_": environment, "auto_requeue": requeue}]
    elif requeue:
        log.warning("slurm.requeue=true, but this is no SLURM job (SLURM_NTASKS unset): nothing to requeue")
    # the films are listed, none decoded: a split that cannot measure the model stops here
    # (trainer.fast_dev_run, a wiring check on one batch, measures nothing)
    if not cfg.trainer.get("fast_dev_run"):
        _build(cfg.data).check_validation()
    outcome = RunOutcome(cfg.trainer.get("max_time"))
    resume_args = list(hydra_cfg.overrides.task)
    try:
        results = train(cfg, callbacks=[outcome], one_process_only=in_process_sweep)
    except SystemExit:  # Lightning ends a run on Ctrl-C or SIGTERM with SystemExit (status 1 or 0)
        end_run(outcome, cfg.paths.output_dir, resume_args)
        raise
    # a sweep in this process goes on to its next job; a cluster job is its own process
    end_run(outcome, cfg.paths.output_dir, resume_args, in_sweep=in_process_sweep)
    return optimized_value(cfg, results)


@exit_on_user_error
def main() -> None:
    """pneumo-train: a resume continues in its checkpoint's run directory (``prepare_launch``),
    and a SLURM job started again by a requeue resumes its run (``requeued_resume``)."""
    sys.argv = [sys.argv[0], *prepare_launch(requeued_resume(sys.argv[1:]))]
    try:
        hydra_main()
    except KeyboardInterrupt:  # before training began (listing the films, building the run)
        print("error: stopped by Ctrl-C (SIGINT) before training began; nothing was saved", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
