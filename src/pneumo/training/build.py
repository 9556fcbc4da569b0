"""Build a run from its composed config: precision, DataModule, network, LightningModule,
Trainer, and the metadata every checkpoint of the run carries."""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, open_dict

from pneumo.artifacts.checkpoint import CheckpointMeta, read_checkpoint, read_meta
from pneumo.callbacks.checkpoint_metadata import CheckpointMetadata
from pneumo.callbacks.lr_stepping import EpochLRStep
from pneumo.data.datamodule import XrayDataModule
from pneumo.data.preprocess import preprocessing_spec
from pneumo.data.provenance import files_fingerprint, record_files
from pneumo.hardware import auto_precision
from pneumo.model.module import XrayClassifier
from pneumo.model.network import resnet18_classifier
from pneumo.training.config import instantiate_group, instantiate_node, plain

log = logging.getLogger(__name__)


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


# the packages whose versions decide what a checkpoint's numbers are
VERSIONED = ("torch", "torchvision", "lightning", "pneumo")


def _installed(name: str) -> str:
    """A package's installed version, or ``unknown`` (pneumo run from a checkout, uninstalled)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _git(package: Path, *args: str) -> str:
    """The output of ``git args`` run in ``package``'s folder (raises when git cannot answer)."""
    done = subprocess.run(
        ["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def code_versions() -> dict[str, str]:
    """The versions of ``VERSIONED`` installed here and, when pneumo runs from its own git
    checkout, its commit (``git_commit``, with ``+dirty`` when files differ from it); absent
    for an installed wheel, even one inside another repository, or without git."""
    versions = {name: _installed(name) for name in VERSIONED}
    package = Path(__file__).resolve().parents[1]  # src/pneumo
    try:
        top = Path(_git(package, "rev-parse", "--show-toplevel")).resolve()
        if package.is_relative_to(top) and (top / "src" / "pneumo") == package:
            dirty = _git(top, "status", "--porcelain", "--untracked-files=no")
            versions["git_commit"] = _git(top, "rev-parse", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass  # an installed wheel, or no git: the package versions say what they can
    return versions


def run_metadata(datamodule: XrayDataModule, config: dict[str, Any]) -> CheckpointMeta:
    """The metadata every checkpoint of a run about to train on ``datamodule`` carries."""
    train_samples, val_samples = datamodule.split_samples()
    return CheckpointMeta(
        versions=code_versions(),
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
    resolve_precision(cfg)
    datamodule: XrayDataModule = instantiate_node(cfg.data)
    datamodule.check_root()
    model_cfg = plain(cfg.model)
    # model.weights chooses the network's starting weights; the module gets the network itself
    net = resnet18_classifier(model_cfg.pop("weights", None))
    weights = datamodule.class_weights()
    if weights is not None:
        log.info("class-weighted loss: %s", [round(w, 3) for w in weights.tolist()])
    model: XrayClassifier = instantiate_node(
        model_cfg,
        net=net,
        positive_index=datamodule.positive_index,
        class_weights=None if weights is None else weights.tolist(),
        seed=datamodule.seed,
        _recursive_=False,
        _convert_="all",
    )
    meta = run_metadata(datamodule, plain(cfg))
    # what every run needs, whatever the config: self-describing checkpoints, an exact resume
    required = [CheckpointMetadata(meta), EpochLRStep()]
    trainer: L.Trainer = instantiate_node(
        cfg.trainer,
        callbacks=[*instantiate_group(cfg.get("callbacks")), *required, *callbacks],
        logger=instantiate_group(cfg.get("logger")) or False,
    )
    return datamodule, model, trainer
