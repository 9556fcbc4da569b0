"""Trackers (Lightning's loggers, ``conf/logger/``): what a run records in each at its start and
at its end, where to look at it, how an evaluation joins it, and a one-line error for a tracker
whose package is not installed.

Every figure the model and the callbacks log once an epoch (``val/auroc``, ``val/loss``,
``time/*``, ...) reaches every tracker through Lightning at the epoch's number (the module logs
``step``, which Lightning takes as the x value), so runs of different batch sizes line up epoch
by epoch. Around that:

- ``start_run`` (when fit starts, a resumed run included): the whole resolved config, flattened,
  as the tracker's parameters (TensorBoard: the HPARAMS tab), and ``config.yaml`` as an artifact
  where the tracker keeps files (MLflow, W&B); it returns the tracker runs' ids, which every
  checkpoint then carries.
- ``finish_run`` (after fit): the best epoch's figures (``best/val/loss``) at the last epoch, and
  ``metrics.json`` (the last epoch's figures and the best) as an artifact.
- ``record_evaluation`` (pneumo-eval): the test figures under ``test/`` in the MLflow run that
  trained the checkpoint, or in a run of their own named after the checkpoint.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import logging
import os
import tempfile
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from pneumo.errors import PneumoError

log = logging.getLogger(__name__)

# A logger class (the last part of its _target_) -> the package it needs and the extra of
# pneumo that installs it.
NEEDS = {"MLFlowLogger": ("mlflow", "mlflow"), "WandbLogger": ("wandb", "wandb")}

# A parameter's value as every tracker takes it.
Scalar = int | float | str | bool


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


def open_stores(loggers: Mapping[str, Any] | None) -> None:
    """Create the SQLite store of each configured MLflow logger, and its experiment, one process
    at a time, before the loggers are built; refuse a W&B folder that cannot be written.

    MLflow creates a new store's tables when a client first connects (Lightning's MLFlowLogger
    does in its constructor), and the experiment when the run opens: two jobs of a sweep doing
    either at once fail (``table runs already exists``, ``duplicate column name: step``; two
    processes on a fresh store failed 3 tries out of 3), while writing to an existing store at
    once works. A lock file beside the database lets the jobs of ``launcher=local`` start together.
    """
    for name, node in (loggers or {}).items():
        target = str(node.get("_target_", "")) if isinstance(node, Mapping) else ""
        if target.endswith("WandbLogger"):
            _check_wandb_folder(name, node)
        if not target.endswith("MLFlowLogger"):
            continue
        uri = str(node.get("tracking_uri") or "")
        if uri.startswith(("http://", "https://")) and not _reachable(uri):
            raise PneumoError(
                f"logger.mlflow.tracking_uri={uri}: no MLflow server answers there; start it "
                "(mlflow server ...) or log to a file store, e.g. "
                "logger.mlflow.tracking_uri=sqlite:///outputs/mlflow.db"
            )
        if not uri.startswith("sqlite:///"):
            continue  # a tracking server serialises its writers itself
        from mlflow.tracking import MlflowClient

        database = Path(uri.removeprefix("sqlite:///"))
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
            with open(f"{database}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
                client = MlflowClient(tracking_uri=uri)
                name = node.get("experiment_name")
                if name and client.get_experiment_by_name(str(name)) is None:
                    client.create_experiment(str(name), artifact_location=node.get("artifact_location"))
        except Exception as err:  # a read-only folder, a damaged database: one line, before training
            raise PneumoError(
                f"logger.mlflow.tracking_uri={uri}: cannot open the MLflow store ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); point it at a folder you can write, "
                "or use another logger (logger=tensorboard)"
            ) from None


def _check_wandb_folder(name: str, node: Mapping[str, Any]) -> None:
    """Refuse, in one line, a W&B folder this process cannot write: ``save_dir`` (Lightning's
    default ``.``; ``dir`` where ``save_dir`` is null), into whose ``wandb/`` W&B writes. W&B
    itself would write the run to a temporary folder instead, with only a warning among many
    lines, and pneumo's record of where the run went would be wrong."""
    key = "dir" if "save_dir" in node and node["save_dir"] is None else "save_dir"
    folder = Path(str(node.get(key) or "."))
    try:
        (folder / "wandb").mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.R_OK):
            raise PermissionError(13, "permission denied")
        with tempfile.TemporaryFile(dir=folder / "wandb"):
            pass
    except OSError as err:
        raise PneumoError(
            f"logger.{name}.{key}={folder}: cannot write there ({(err.strerror or str(err)).lower()}); "
            "point it at a folder you can write, or use another logger (logger=tensorboard)"
        ) from None


def flat_params(config: Mapping[str, Any]) -> dict[str, Scalar]:
    """Every setting of a resolved config as ``group.key.subkey: value``, every group included
    (callbacks, logger, ...): lists and ``None`` as their text, so that each tracker shows them.
    ``_target_`` and ``_partial_`` are Hydra's plumbing and left out."""
    flat: dict[str, Scalar] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                if key not in ("_target_", "_partial_"):
                    walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", config)
    return flat


def start_run(
    loggers: Sequence[Logger], params: Mapping[str, Scalar], config_yaml: str, figures: Sequence[str]
) -> dict[str, dict[str, str]]:
    """Give every tracker the run's identity before its first epoch: ``params`` (the flattened
    config), and ``config_yaml`` (the resolved config) as a file where the tracker keeps files.
    An interrupted or crashed run is then as comparable as a finished one.

    TensorBoard's HPARAMS tab gets the settings with ``figures`` as its metric columns, the tags
    of the per-epoch figures themselves (and ``best/...``), whose last values it shows.
    Returns, by tracker, what finds its run again (an evaluation joins it, ``record_evaluation``):
    MLflow's tracking URI, experiment and run id; W&B's project, run id and folder.
    """
    ids: dict[str, dict[str, str]] = {}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            _tensorboard_hparams(logger, params, figures)
        else:
            logger.log_hyperparams(dict(params))
        if isinstance(logger, MLFlowLogger):
            logger.experiment.log_text(logger.run_id, config_yaml, "config.yaml")
            ids["mlflow"] = {
                "tracking_uri": str(logger.experiment.tracking_uri),
                "experiment_id": str(logger.experiment_id),
                "run_id": str(logger.run_id),
            }
        elif isinstance(logger, WandbLogger):
            _wandb_file(logger, "config.yaml", config_yaml)
            run = logger.experiment
            ids["wandb"] = {"project": str(run.project), "run_id": str(run.id), "dir": str(run.dir)}
        logger.save()
    return ids


def finish_run(
    loggers: Sequence[Logger],
    results: Mapping[str, float],
    epoch: int,
    stopped: str | None = None,
    exit_status: int = 0,
) -> None:
    """Record the run's best epoch's figures (``best/...`` in ``results``) at ``epoch``, the
    run's last, and all of ``results`` (the last epoch's figures and the best) as
    ``metrics.json`` where the tracker keeps files; write each tracker out
    (CSV: metrics.csv and hparams.yaml) and finish a W&B run, so that the next run of this
    process (a sweep job, a search trial) gets its own instead of continuing this one.

    A run that ``trainer.max_time`` stopped before its schedule finished (``stopped``: e.g.
    ``stopped by trainer.max_time=00:04:00:00 after 3 of 25 epochs``; ``exit_status``: the
    command's) is not shown as finished, though Lightning ends it as one: MLflow marks it KILLED
    with the tag ``pneumo.stopped``, W&B finishes it with that exit status (W&B shows it failed)
    and ``pneumo/stopped`` in its summary. (Lightning marks a run a signal stopped FAILED.)"""
    best = {k: v for k, v in results.items() if k.startswith("best/")}
    summary = json.dumps(dict(sorted(results.items())), indent=2) + "\n"
    for logger in loggers:
        try:
            if best:
                logger.log_metrics(best, step=epoch)
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_text(logger.run_id, summary, "metrics.json")
                if stopped:
                    logger.experiment.set_tag(logger.run_id, "pneumo.stopped", stopped)
                    logger.experiment.set_terminated(logger.run_id, "KILLED")
            elif isinstance(logger, WandbLogger):
                _wandb_file(logger, "metrics.json", summary)
                if stopped:
                    logger.experiment.summary["pneumo/stopped"] = stopped
            logger.save()
            if isinstance(logger, WandbLogger):
                logger.experiment.finish(exit_code=exit_status if stopped else 0)
        except Exception as err:  # the run is trained and its checkpoints written: keep it
            log.warning(
                "%s could not record the run's end (%s): the figures are in the checkpoints and train.log",
                type(logger).__name__,
                err,
            )


def _tensorboard_hparams(
    logger: TensorBoardLogger, params: Mapping[str, Scalar], figures: Sequence[str]
) -> None:
    """The HPARAMS tab's record of a run, written at its start. Lightning's ``log_hyperparams``
    would also log placeholder values of the figures at step 0; here the tab names the run's
    own per-epoch tags and reads their last values as the run goes."""
    from torch.utils.tensorboard.summary import hparams

    logger.hparams.update(params)  # hparams.yaml beside the event files
    writer = logger.experiment._get_file_writer()  # as Lightning's own log_hyperparams writes it
    for summary in hparams(dict(params), dict.fromkeys(figures, 0.0)):
        writer.add_summary(summary)


def _wandb_file(logger: WandbLogger, name: str, text: str) -> None:
    """``text`` as the file ``pneumo/NAME`` of the W&B run (synced with it)."""
    run = logger.experiment
    path = Path(run.dir) / "pneumo" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    run.save(str(path), base_path=run.dir, policy="now")


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
            show = f"mlflow ui --backend-store-uri {uri}" if not uri.startswith("http") else uri
            lines.append(f"MLflow: {show}  (run {logger.run_id})")
        elif isinstance(logger, WandbLogger):
            lines.append(
                f"W&B: {Path(str(logger.save_dir)) / 'wandb'}  (an offline run: wandb sync its folder)"
            )
    return lines


# pneumo-eval's figures in a tracker: the name in metrics.json -> under test/
EVALUATION_FIGURES = ("auroc", "sensitivity", "specificity")


def evaluation_figures(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The evaluated figures at the stored threshold with their patient-bootstrap (or Wilson)
    intervals, named by the split: ``test/auroc``, ``test/auroc_low``, ``test/auroc_high``, ...
    for the test split, ``eval/val/auroc``, ... for any other (metrics.json's)."""
    split = str(metrics.get("split", "test"))
    prefix = "test/" if split == "test" else f"eval/{split}/"
    intervals = metrics.get("intervals") or {}
    stored = (intervals.get("at_threshold") or {}).get("figures", {})
    figures: dict[str, float] = {f"{prefix}threshold": float(metrics["threshold"])}
    for name in EVALUATION_FIGURES:
        if name not in metrics:
            continue
        figures[f"{prefix}{name}"] = float(metrics[name])
        bounds = intervals.get("auroc") if name == "auroc" else stored.get(name)
        bounds = (bounds or {}).get("bootstrap") or (bounds or {}).get("wilson")
        if bounds:
            figures[f"{prefix}{name}_low"], figures[f"{prefix}{name}_high"] = map(float, bounds)
    return figures


def record_evaluation(
    trackers: Mapping[str, Any] | None, metrics: Mapping[str, Any], ckpt_path: str | Path
) -> dict[str, str] | None:
    """Log an evaluation's test figures (``evaluation_figures``) to the MLflow run that trained
    the checkpoint (``trackers``, recorded at training), or, when that run is gone from a
    reachable store, to a new run there named after the checkpoint. Returns where they went
    (for metrics.json); ``None`` when the checkpoint names no MLflow run or its store cannot be
    reached (a warning says so: the evaluation itself stands)."""
    known = (trackers or {}).get("mlflow")
    if not known:
        return None
    uri = str(known["tracking_uri"])
    if not _reachable(uri):
        log.warning("MLflow store %s cannot be reached: the test figures stay in metrics.json only", uri)
        return None
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        log.warning("the checkpoint names an MLflow run; pip install 'pneumo[mlflow]' to log to it")
        return None
    try:
        client = MlflowClient(tracking_uri=uri)
        try:
            run_id = client.get_run(known["run_id"]).info.run_id
            joined = "training run"
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            experiment = known.get("experiment_id") or client.create_experiment("eval")
            run_id = client.create_run(experiment, run_name=f"eval {Path(ckpt_path).name}").info.run_id
            joined = "own run"
        for key, value in evaluation_figures(metrics).items():
            client.log_metric(run_id, key, value)
        # which file the figures are of: evaluating best.ckpt, then last.ckpt, replaces them
        client.set_tag(run_id, f"evaluated/{metrics.get('split', 'test')}", str(Path(ckpt_path).resolve()))
        if joined == "own run":
            client.set_terminated(run_id)
    except Exception as err:  # a store that fails mid-way must not cost the evaluation
        log.warning("MLflow store %s refused the figures (%s): they stay in metrics.json only", uri, err)
        return None
    log.info("evaluation figures logged to MLflow %s (%s %s)", uri, joined, run_id)
    return {"tracking_uri": uri, "run_id": run_id, "joined": joined}


def _reachable(uri: str) -> bool:
    """Whether an MLflow store answers: a tracking server's health page within 5 s, a SQLite
    file that exists (MLflow would otherwise create an empty one)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
                return True
        except OSError:
            return False
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return Path(uri.removeprefix("file://")).exists()
