"""The end of a k-fold cross-validation: out-of-fold scores, the operating point fitted on them,
the figures with their spread across folds, and the fold ensemble.

Every training film lies in exactly one fold's validation films, so the fold model that did not
train on it scores it once (``out_of_fold``): ``oof.csv``. The temperature and the threshold
(the runs' own rule) are fitted on all these films together, several times the films one
carved validation split holds; ``cv.json`` gives the figures at that operating point, pooled
with patient-bootstrap intervals and fold by fold with their mean and standard deviation.

These figures are optimistic, not a held-out estimate: each fold's ``best.ckpt`` (and its early
stop) was chosen by ``val/auroc`` on the very films ``oof.csv`` scores, and the temperature and
threshold are fitted on them too.
``cv.ckpt`` averages the fold models (``network.Ensemble``) and serves the out-of-fold
temperature and threshold.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumo.artifacts.checkpoint import AtomicCheckpointIO
from pneumo.artifacts.output import atomic_path
from pneumo.data.dataset import Sample
from pneumo.data.manifest import Manifest, load_manifest
from pneumo.data.provenance import files_fingerprint, fold_differences, validation_samples
from pneumo.data.split import patient_id
from pneumo.errors import PneumoError
from pneumo.evaluation.statistics import PatientBootstrap, auroc_with_interval, figures_with_intervals
from pneumo.model.calibration import apply_temperature, fit_temperature, margin_from_probability
from pneumo.model.metrics import auroc, metrics_at
from pneumo.model.network import Ensemble
from pneumo.serving.ensemble import BEST, recorded_root, rule_parameters, threshold_by_rule
from pneumo.serving.loading import LoadedModel, load_model
from pneumo.serving.margins import film_margins

OOF_CSV = "oof.csv"
CV_JSON = "cv.json"
CV_CKPT = "cv.ckpt"
# The figures given per fold, with their spread, and pooled with intervals.
CV_FIGURES = ("auroc", "sensitivity", "specificity")
# What the out-of-fold figures are: each film is scored by a model that did not train on it,
# but that model's epoch was chosen on it.
OPTIMISTIC = (
    "optimistic, not a held-out estimate: each fold's best.ckpt (and its early stop) was chosen by "
    "val/auroc on the very films oof.csv scores, and the temperature and threshold were fitted on them; "
    "each film is scored by a model that did not train on it"
)


@dataclass(frozen=True)
class OutOfFold:
    """One training film scored by the fold model that validated on it."""

    path: str  # relative to the data root, as the checkpoints record it
    patient: str
    fold: int
    label: str  # class name
    positive: int  # 1 for the positive class
    logit: float  # the uncalibrated margin, logit_positive - logit_negative


def fold_of(model: LoadedModel) -> tuple[int, int]:
    """``(fold, folds)`` a checkpoint validated on; refused in one line when it is no fold run."""
    data = model.meta.config.get("data", {})
    fold, folds = data.get("fold"), data.get("folds")
    if not isinstance(fold, int) or not isinstance(folds, int):
        raise PneumoError(
            f"{model.path} was not trained as a cross-validation fold (data.folds={folds}, "
            f"data.fold={fold}); train the folds with cv=5fold"
        )
    return fold, folds


def fold_models(sweep: str | Path) -> list[LoadedModel]:
    """The ``best.ckpt`` of every fold of the sweep, in fold order: one per fold of ``data.folds``,
    trained alike but for the fold (``provenance.fold_differences``)."""
    sweep = Path(sweep)
    paths = sorted(sweep.glob(f"*/{BEST.as_posix()}"))
    if not paths:
        raise PneumoError(f"{sweep} holds no */{BEST}: no fold of the cross-validation finished")
    models = [load_model(path) for path in paths]
    by_fold: dict[int, LoadedModel] = {}
    folds = fold_of(models[0])[1]
    for model in models:
        model.meta.refuse_ensemble(model.path, "a cross-validation fold", "give the fold runs")
        fold, k = fold_of(model)
        if fold in by_fold:
            raise PneumoError(f"{model.path} and {by_fold[fold].path} both validate on fold {fold}; keep one")
        differences = fold_differences(models[0].meta.config, model.meta.config)
        if k != folds or differences:
            key, then, now = differences[0] if differences else ("data.folds", folds, k)
            raise PneumoError(
                f"{model.path} was trained with {key}={now}, {models[0].path} with {key}={then}: the folds "
                "of one cross-validation must be trained alike; train them again into one sweep folder"
            )
        by_fold[fold] = model
    missing = [str(i) for i in range(folds) if i not in by_fold]
    if missing:
        raise PneumoError(
            f"{sweep} lacks fold {', '.join(missing)} of data.folds={folds} (no {BEST}): every training film "
            "must be scored by the fold that left it out; finish the sweep (launch it again with "
            f"hydra.sweep.dir={sweep})"
        )
    return [by_fold[i] for i in range(folds)]


def manifest_patients(model: LoadedModel) -> dict[str, str]:
    """Each film's patient as the run's manifest gives it (its patient column, else the file
    name), by path relative to the manifest's folder; empty for a run on class folders, whose
    patients come from the file names (``split.patient_id``)."""
    manifest = Manifest.from_config(model.meta.config.get("data", {}).get("manifest"))
    if manifest is None:
        return {}
    listing = load_manifest(manifest, model.meta.classes)
    return {
        Path(s.path).relative_to(manifest.folder).as_posix(): patient
        for s, patient in zip(listing.samples, listing.patients)
    }


def out_of_fold(models: Sequence[LoadedModel], root: str | Path | None = None) -> list[OutOfFold]:
    """Every training film scored by the fold model that validated on it (``film_margins``),
    under ``root`` (default: where the first fold's config says the data lie). The folds'
    validation films must not overlap, and together be every film the folds trained on."""
    first = models[0]
    root = Path(root) if root is not None else recorded_root(first)
    patients = manifest_patients(first)
    rows: list[OutOfFold] = []
    seen: dict[str, int] = {}
    for fold, model in enumerate(models):
        samples = validation_samples(model.meta, root, model.path)
        assert model.meta.val_files is not None  # validation_samples refuses a checkpoint without
        for path, _ in model.meta.val_files:
            if path in seen:
                raise PneumoError(f"{path} validates in fold {seen[path]} and fold {fold}: the folds overlap")
            seen[path] = fold
        margins = film_margins(model, [s.path for s in samples])
        for (path, name), sample, margin in zip(model.meta.val_files, samples, margins.tolist()):
            positive = int(sample.label == model.positive_index)
            rows.append(OutOfFold(path, patients.get(path) or patient_id(path), fold, name, positive, margin))
    classes = first.meta.classes
    for fold, model in enumerate(models):
        trained = model.meta.train_files
        outside = [r for r in rows if r.fold != fold]
        if trained is not None and oof_fingerprint(outside, classes) != trained:
            raise PneumoError(
                f"{model.path} trained on {trained.get('count')} films that are not the {len(outside)} films "
                "the other folds validate on: the folds do not cover the same films; train them again into "
                "one sweep folder"
            )
    return rows


def oof_fingerprint(rows: Sequence[OutOfFold], classes: Sequence[str]) -> dict[str, Any]:
    """``provenance.files_fingerprint`` of the films of ``rows``, as a run records its training files."""
    samples = [Sample(Path(r.path), list(classes).index(r.label)) for r in rows]
    return files_fingerprint(samples, Path("."), classes)


def write_oof(rows: Sequence[OutOfFold], path: str | Path) -> None:
    """``oof.csv``: path, patient, fold, label, logit (the uncalibrated margin), one row a film."""
    with atomic_path(path) as partial, partial.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "patient", "fold", "label", "logit"])
        for row in rows:
            writer.writerow([row.path, row.patient, row.fold, row.label, repr(row.logit)])


def _spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and the values, fold by fold."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values), "folds": list(values)}


def cv_figures(
    rows: Sequence[OutOfFold], models: Sequence[LoadedModel], draws: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """The out-of-fold temperature and threshold (the runs' rule, on every film), and at them
    AUROC, sensitivity and specificity pooled (patient-bootstrap and Wilson intervals) and fold
    by fold (mean, sd, each fold); beside them, each fold's own stored threshold, in log-odds."""
    margins = torch.tensor([r.logit for r in rows], dtype=torch.float64)
    positive = torch.tensor([r.positive for r in rows])
    folds = np.array([r.fold for r in rows])
    temperature = fit_temperature(margins, positive)
    probs = apply_temperature(margins, temperature)
    threshold = threshold_by_rule(models[0].meta, probs, positive)
    boot = PatientBootstrap.draw([r.patient for r in rows], positive.numpy(), draws, seed)
    p, truth = probs.numpy(), positive.numpy()
    with_intervals = figures_with_intervals(p, truth, threshold, boot)
    pooled = {
        "auroc": auroc_with_interval(p, truth, boot),
        **{name: with_intervals[name] for name in ("sensitivity", "specificity", "acc")},
    }
    per_fold: dict[str, list[float]] = {name: [] for name in CV_FIGURES}
    for fold in range(len(models)):
        members = torch.from_numpy(folds == fold)
        at = metrics_at(probs[members], positive[members], threshold)
        per_fold["auroc"].append(auroc(probs[members], positive[members]))
        per_fold["sensitivity"].append(at["sensitivity"])
        per_fold["specificity"].append(at["specificity"])
    stored = [float(margin_from_probability(m.threshold)) * m.meta.temperature for m in models]
    return {
        "folds": len(models),
        "films": len(rows),
        "films_by_class": {name: sum(1 for r in rows if r.label == name) for name in models[0].meta.classes},
        "patients": len({r.patient for r in rows}),
        "rule": rule_parameters(models[0].meta),
        "temperature": temperature,
        "threshold": threshold,
        "threshold_logit": float(margin_from_probability(threshold)) * temperature,
        "pooled": pooled,
        "by_fold": {name: _spread(values) for name, values in per_fold.items()},
        "fold_thresholds": {
            "stored": [m.threshold for m in models],
            # each fold's threshold as a margin of its network: its logit times its temperature
            "logit": _spread(stored),
            "temperatures": [m.meta.temperature for m in models],
        },
        "bootstrap": boot.describe(),
        "note": OPTIMISTIC,
    }


def write_cv_checkpoint(
    models: Sequence[LoadedModel], rows: Sequence[OutOfFold], figures: dict[str, Any], out: str | Path
) -> None:
    """``cv.ckpt``: the fold models averaged (``network.Ensemble``), serving the out-of-fold
    temperature and threshold. It records no validation films: every film trained some member."""
    first = models[0]
    # no fold validates: data.fold cleared (data.folds kept, to rebuild the films they trained on)
    config = copy.deepcopy(first.meta.config)
    if isinstance(config.get("data"), dict):
        config["data"]["fold"] = None
    meta = replace(
        first.meta,
        config=config,
        threshold=figures["threshold"],
        val_files=[],
        train_files=oof_fingerprint(rows, first.meta.classes),
        calibration={
            "method": "temperature",
            "temperature": figures["temperature"],
            "fitted_on": "out-of-fold",
            "films": len(rows),
        },
        ensemble={
            "members": [{"file": str(m.path), "threshold": m.threshold} for m in models],
            "cross_validation": {"folds": len(models), "seed": first.meta.config.get("data", {}).get("seed")},
        },
    )
    net = Ensemble([m.net for m in models]).eval()
    AtomicCheckpointIO().save_checkpoint({"pneumo": meta.as_dict(), "state_dict": net.state_dict()}, out)


def cross_validate(sweep: str | Path, data_root: str | Path | None = None) -> dict[str, Any]:
    """Write ``oof.csv``, ``cv.json`` and ``cv.ckpt`` into the sweep folder of a k-fold
    cross-validation; return the figures of ``cv.json``."""
    sweep = Path(sweep)
    models = fold_models(sweep)
    rows = out_of_fold(models, data_root)
    write_oof(rows, sweep / OOF_CSV)
    figures = cv_figures(rows, models)
    figures["members"] = [str(m.path) for m in models]
    with atomic_path(sweep / CV_JSON) as partial:
        partial.write_text(json.dumps(_finite(figures), indent=2) + "\n")
    write_cv_checkpoint(models, rows, figures, sweep / CV_CKPT)
    return figures


def _finite(value: Any) -> Any:
    """NaN and infinities as null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
