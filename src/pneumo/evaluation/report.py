"""Evaluating a checkpoint on a labelled split: metrics.json, errors.csv, model_card.md and the
pictures, from one command.

Figures are given at the threshold chosen on validation during training (stored in the
checkpoint) and at 0.5 (exploratory), and per acquisition group (the file-naming families of
Kermany's archive) at the stored threshold, each with a 95 % interval (``statistics``: Wilson
for proportions, a bootstrap resampling patients for every figure and AUROC). The flow of
films (found, left out, evaluated, patients per class, overlap with the checkpoint's own
patients: ``flow``), where the threshold came from, a decision curve, and, given a second
checkpoint, a paired comparison of the two models on the same films, sit beside them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumo.artifacts.checkpoint import CheckpointMeta
from pneumo.artifacts.output import write_text_atomically
from pneumo.artifacts.trackers import record_evaluation
from pneumo.data.dataset import Sample
from pneumo.data.split import acquisition_group, patient_id
from pneumo.errors import PneumoError, printable
from pneumo.evaluation.flow import SplitFiles, film_flow, list_split_files, overlap_report
from pneumo.evaluation.model_card import CARD_KEYS, write_model_card
from pneumo.evaluation.plots import plot_confusion, plot_decision_curve, plot_roc
from pneumo.evaluation.statistics import (
    DRAWS,
    LEVEL,
    SEED,
    PatientBootstrap,
    auroc_with_interval,
    decision_curve,
    figures_with_intervals,
    group_intervals,
    mcnemar,
    paired_auroc_difference,
)
from pneumo.model.calibration import (
    apply_temperature,
    calibration_report,
    margin_from_probability,
    plot_reliability,
)
from pneumo.model.metrics import evaluation_metrics, group_metrics
from pneumo.model.threshold import PLATEAU_TOLERANCE, POSITIVE_IF, is_positive, threshold_spread
from pneumo.serving.inference import Prediction, label_for, predict
from pneumo.serving.loading import LoadedModel, load_model

log = logging.getLogger(__name__)

EXPLORATORY_05 = (
    "exploratory: 0.5 is not this model's operating point (the stored threshold is); shown for "
    "comparison only"
)


@dataclass(frozen=True)
class ReportOptions:
    """What pneumo-eval adds to the figures: the intervals' ``level``, bootstrap ``draws`` and
    ``seed``; Grad-CAM overlays of the errors (``cam``); a second checkpoint to compare on the
    same films (``compare_ckpt_path``); and what only the user knows for the model card
    (``card``: authors, contact, notes, ...)."""

    level: float = LEVEL
    draws: int = DRAWS
    seed: int = SEED
    cam: bool = False
    compare_ckpt_path: str | None = None
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = (
            ("intervals.level", self.level, 0 < self.level < 1, "a coverage between 0 and 1, e.g. 0.95"),
            ("intervals.draws", self.draws, self.draws >= 1, "1 or more bootstrap draws, e.g. 2000"),
        )
        for key, value, ok, expected in checks:
            if not ok:
                raise PneumoError(f"{key}={value} is not valid: use {expected}")
        unknown = sorted(set(self.card) - set(CARD_KEYS))
        if unknown:
            raise PneumoError(f"card has no key {unknown[0]!r}: use {', '.join(CARD_KEYS)}")


def films_of_split(model: LoadedModel, root: Path, split: str) -> list[Sample]:
    """The labelled images of ``split``; ``val`` is exactly the files the run validated on."""
    return list_split_files(model.meta, model.path, root, split).samples


CALIBRATION_FIGURES = ("brier", "ece", "calibration_slope", "calibration_intercept")


def calibration_before_after(
    probs: torch.Tensor, targets: torch.Tensor, temperature: float
) -> dict[str, Any]:
    """How well the probabilities match the observed frequencies, as served (``after`` the
    checkpoint's temperature) and as the network gave them (``before``)."""
    margins = margin_from_probability(probs.double())
    assert isinstance(margins, torch.Tensor)  # a tensor in, a tensor out
    raw = apply_temperature(margins * temperature, 1.0)
    return {
        "method": "temperature scaling, fitted on the validation films during training",
        "temperature": temperature,
        "before": calibration_report(raw, targets),
        "after": calibration_report(probs.double(), targets),
    }


_RULES = {
    "youden": "the cut-off with the largest sensitivity + specificity - 1 (Youden's J)",
    "sensitivity": "the highest cut-off whose sensitivity reaches target_sensitivity (the best "
    "specificity there)",
    "plateau": "the middle, on the logit scale, of the cut-offs reaching target_sensitivity whose "
    "specificity lies within plateau_tolerance of the best such cut-off's",
    "fixed": "0.5 by rule, not chosen on data",
}


def _counts(by_class: dict[str, Any]) -> str:
    return ", ".join(f"{n} {c}" for c, n in by_class.items())


def _chosen_where(
    meta: CheckpointMeta, method: str, val: Sequence[Sequence[str]], by_class: dict[str, int]
) -> tuple[str | None, str]:
    """Which films the threshold and temperature were fitted on (``validation``, ``site``,
    ``out-of-fold``, or None for a fixed rule) and, in words, how: read from the checkpoint's
    calibration record, since pneumo-recalibrate and a cross-validation refit them elsewhere."""
    calibration = meta.calibration or {}
    fitted_on = calibration.get("fitted_on")
    site = calibration.get("recalibration")
    if fitted_on == "site" and isinstance(site, dict):
        patients = site.get("patients_by_class") or {}
        return "site", (
            f"by pneumo-recalibrate on the network's calibrated probabilities of the {site.get('films')} "
            f"films ({_counts(site.get('films_by_class') or {})}) of {sum(patients.values())} patients "
            f"({_counts(patients)}) in the site folder {site.get('site')}, not on validation films"
        )
    if method == "fixed":
        return None, "by rule, not on data"
    if fitted_on == "out-of-fold":
        return "out-of-fold", (
            f"on the out-of-fold single-model probabilities of {calibration.get('films')} training films "
            "of a cross-validation (each scored by the fold model that did not train on it, at the epoch "
            "chosen on it), not on validation films: this checkpoint has none"
        )
    what = "the ensemble's averaged" if meta.ensemble is not None else "the network's"
    return "validation", (
        f"on {what} calibrated probabilities of the {len(val)} validation films "
        f"({_counts(by_class)}) at the epoch the checkpoint was saved"
    )


def threshold_origin(meta: CheckpointMeta) -> dict[str, Any]:
    """Where the stored threshold came from: the rule (``model.threshold_method`` of the run's
    config), its parameters, the films it was chosen on and its value."""
    model_cfg = meta.config.get("model") if isinstance(meta.config.get("model"), dict) else {}
    assert isinstance(model_cfg, dict)
    recorded = "threshold_method" in model_cfg
    method = str(model_cfg.get("threshold_method", "youden"))
    parameters: dict[str, Any] = {}
    if method in ("sensitivity", "plateau"):
        parameters["target_sensitivity"] = float(model_cfg.get("target_sensitivity", 0.95))
    if method == "plateau":
        parameters["plateau_tolerance"] = float(model_cfg.get("plateau_tolerance", PLATEAU_TOLERANCE))
    val = meta.val_files or []
    by_class = {name: sum(1 for _, c in val if c == name) for name in meta.classes}
    chosen_on, where = _chosen_where(meta, method, val, by_class)
    return {
        "value": meta.threshold,
        "rule": method,
        "rule_recorded": recorded,
        "description": _RULES.get(method, method),
        "parameters": parameters,
        "chosen_on": chosen_on,
        "validation_films": len(val),
        "validation_by_class": by_class,
        "where": where,
        "positive_if": POSITIVE_IF,
        "at_0.5": EXPLORATORY_05,
    }


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for piece in iter(lambda: file.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _intervals(
    probs: np.ndarray, positive: np.ndarray, threshold: float, bootstrap: PatientBootstrap
) -> dict[str, Any]:
    """Every figure at the stored threshold and at 0.5, and AUROC, with their intervals."""
    return {
        "level": bootstrap.level,
        "wilson": {
            "method": "Wilson score interval (scipy.stats.binomtest(k, n).proportion_ci(method='wilson')), "
            "films counted as independent",
            "figures": "acc, sensitivity, specificity, precision, npv (proportions of films); none for f1",
        },
        "bootstrap": bootstrap.describe(),
        "at_threshold": {
            "threshold": threshold,
            "role": "operating point: the threshold stored in the checkpoint",
            "figures": figures_with_intervals(probs, positive, threshold, bootstrap),
        },
        "at_0.5": {
            "threshold": 0.5,
            "role": EXPLORATORY_05,
            "figures": figures_with_intervals(probs, positive, 0.5, bootstrap),
        },
        "auroc": auroc_with_interval(probs, positive, bootstrap),
    }


ERROR_COLUMNS = (
    "rank",
    "path",
    "error",
    "truth",
    "predicted",
    "patient",
    "group",
    "p_positive",
    "threshold",
    "distance",
)


def error_rows(model: LoadedModel, kept: list[Prediction], positive: np.ndarray) -> list[dict[str, Any]]:
    """Every false positive and false negative at the stored threshold, worst first: farthest
    from the threshold (``distance = |p - threshold|``), then by path."""
    called = is_positive(torch.tensor([r.p_positive for r in kept], dtype=torch.float64), model.threshold)
    wrong: list[dict[str, Any]] = []
    for row, truth, decision in zip(kept, positive.tolist(), called.tolist()):
        if bool(truth) == bool(decision):
            continue
        assert row.p_positive is not None  # kept rows were read
        wrong.append(
            {
                "path": row.path,
                "error": "false positive" if decision else "false negative",
                "truth": label_for(model, bool(truth)),
                "predicted": label_for(model, bool(decision)),
                "patient": patient_id(row.path),
                "group": acquisition_group(row.path) or "",
                "p_positive": row.p_positive,
                "threshold": model.threshold,
                "distance": abs(row.p_positive - model.threshold),
            }
        )
    wrong.sort(key=lambda r: (-r["distance"], r["path"]))
    return [{"rank": rank, **row} for rank, row in enumerate(wrong, start=1)]


def write_errors(path: Path, rows: list[dict[str, Any]], cam: bool) -> None:
    """errors.csv: one line per error, ``cam`` (the overlay's file) as a last column when drawn."""
    buffer = io.StringIO()
    columns = [*ERROR_COLUMNS, "cam"] if cam else list(ERROR_COLUMNS)
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: printable(v) if isinstance(v, str) else v for k, v in row.items()})
    write_text_atomically(path, buffer.getvalue())


def _refuse_cam(model: LoadedModel) -> None:
    """Stop ``cam=true`` before any film is read: an ensemble has no one network to explain,
    and Grad-CAM needs captum."""
    model.meta.refuse_ensemble(
        model.path, "Grad-CAM (cam=true)", "evaluate with cam=false, or evaluate one of its members"
    )
    try:
        import captum  # noqa: F401
    except ImportError as err:
        raise PneumoError("cam=true needs captum: pip install 'pneumo[cam]'") from err


def _comparable(a: LoadedModel, b: LoadedModel) -> None:
    """Two models answer the same question only with the same classes and positive class; the
    order of the classes does not matter (both are compared on P(positive class))."""
    if set(a.classes) != set(b.classes) or a.meta.positive_class != b.meta.positive_class:
        raise PneumoError(
            f"compare_ckpt_path={b.path} sorts {b.classes} with positive class {b.meta.positive_class!r}, "
            f"but {a.path} sorts {a.classes} with positive class {a.meta.positive_class!r}: compare "
            "models of the same task"
        )


def compare_models(
    a: LoadedModel,
    b: LoadedModel,
    kept: list[Prediction],
    positive: np.ndarray,
    batch_size: int,
    tta: bool,
    options: ReportOptions,
) -> dict[str, Any]:
    """Model ``b`` on the films ``a`` was evaluated on: AUROC difference (a - b) with a paired
    patient-bootstrap interval, and exact McNemar tests of sensitivity and specificity, each
    model at its own stored threshold."""
    rows_b = predict(b, [Path(r.path) for r in kept], batch_size, progress=len(kept) > batch_size, tta=tta)
    p_b_of = {r.path: r.p_positive for r in rows_b if not r.error}
    both = [i for i, r in enumerate(kept) if r.path in p_b_of]
    left_out = [r.path for r in kept if r.path not in p_b_of]
    truth = positive[both].astype(bool)
    p_a = np.array([kept[i].p_positive for i in both], dtype=np.float64)
    p_b = np.array([p_b_of[kept[i].path] for i in both], dtype=np.float64)
    patients = [patient_id(kept[i].path) for i in both]
    bootstrap = PatientBootstrap.draw(patients, truth, options.draws, options.seed, options.level)
    called_a = is_positive(torch.from_numpy(p_a), a.threshold).numpy()
    called_b = is_positive(torch.from_numpy(p_b), b.threshold).numpy()

    def rate(called: np.ndarray, members: np.ndarray, want: bool) -> float:
        return float(np.mean(called[members] == want)) if members.any() else float("nan")

    return {
        "a": {"checkpoint": str(a.path.resolve()), "threshold": a.threshold},
        "b": {"checkpoint": str(b.path.resolve()), "threshold": b.threshold},
        "films": len(both),
        "patients": len(set(patients)),
        "left_out": left_out,
        "auroc": paired_auroc_difference(p_a, p_b, truth, bootstrap),
        "bootstrap": bootstrap.describe(),
        "sensitivity": {
            "a": rate(called_a, truth, True),
            "b": rate(called_b, truth, True),
            **mcnemar(called_a[truth], called_b[truth]),
        },
        "specificity": {
            "a": rate(called_a, ~truth, False),
            "b": rate(called_b, ~truth, False),
            **mcnemar(~called_a[~truth], ~called_b[~truth]),
        },
        "note": "each model at its own stored threshold; McNemar counts films as independent, the "
        "AUROC interval resamples patients",
    }


def _flow(
    model: LoadedModel, files: SplitFiles, root: Path, split: str, failed: list[Prediction]
) -> dict[str, Any]:
    """The flow of films, and whether their patients trained or tuned the checkpoint (the
    training files rebuilt under the evaluated data root, then under the run's own)."""
    flow = film_flow(files, root / split, model.classes, {r.path: r.error for r in failed})
    config_root = (model.meta.config.get("data") or {}).get("root")
    roots = [root] + ([Path(str(config_root))] if config_root else [])
    unread = {r.path for r in failed}
    evaluated = [s for s in files.samples if str(s.path) not in unread]
    flow["overlap"], flow["warnings"] = overlap_report(model.meta, split, evaluated, roots)
    for warning in flow["warnings"]:
        log.warning("%s", warning)
    return flow


def _decision_curve(p: np.ndarray, positive: np.ndarray) -> dict[str, Any]:
    """Net benefit over threshold probabilities, labelled exploratory."""
    prevalence = float(positive.mean())
    return {
        "label": "exploratory: net benefit needs calibrated probabilities and a realistic prevalence; "
        f"this split's prevalence is {prevalence:.3f}",
        "prevalence": prevalence,
        "formula": "net benefit = TP/n - FP/n * pt/(1 - pt); treat all = prevalence - (1 - prevalence) * "
        "pt/(1 - pt); treat none = 0",
        "rows": decision_curve(p, positive),
    }


def _report_errors(
    model: LoadedModel, kept: list[Prediction], positive: np.ndarray, output_dir: Path, cam: bool
) -> dict[str, Any]:
    """errors.csv, with a Grad-CAM overlay of each error in errors_cam/ when ``cam``."""
    errors = error_rows(model, kept, positive)
    if cam and errors:
        from pneumo.serving.cam import write_cams

        pictures = write_cams(model, [Path(row["path"]) for row in errors], output_dir / "errors_cam")
        for error, picture in zip(errors, pictures):
            error["cam"] = str(picture.relative_to(output_dir))
    write_errors(output_dir / "errors.csv", errors, cam)
    return {
        "file": "errors.csv",
        "false_positives": sum(r["error"] == "false positive" for r in errors),
        "false_negatives": sum(r["error"] == "false negative" for r in errors),
        "cam": "errors_cam/" if cam and errors else None,
    }


def evaluate(
    ckpt_path: str,
    root: str,
    split: str,
    output_dir: Path,
    batch_size: int = 32,
    tta: bool = False,
    options: ReportOptions | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split; write metrics.json, errors.csv, model_card.md and the
    pictures into ``output_dir``; return the metrics."""
    options = options or ReportOptions()
    model = load_model(ckpt_path)
    if options.cam:
        _refuse_cam(model)
    other = load_model(options.compare_ckpt_path) if options.compare_ckpt_path else None
    if other is not None:
        _comparable(model, other)
    files = list_split_files(model.meta, model.path, Path(root), split)
    samples = files.samples
    rows = predict(model, [s.path for s in samples], batch_size, progress=len(samples) > batch_size, tta=tta)
    failed = [r for r in rows if r.error]
    for row in failed:
        log.warning("left out %s: %s", printable(row.path), row.error)
    # 1 for the positive class, whatever its place in data.classes
    label_of = {str(s.path): int(s.label == model.positive_index) for s in samples}
    kept = [r for r in rows if not r.error]
    if not kept:
        raise PneumoError(f"no film of {files.source} could be read; see the warnings above")
    probs = torch.tensor([r.p_positive for r in kept])
    targets = torch.tensor([label_of[r.path] for r in kept])
    target = float(model.meta.config.get("model", {}).get("target_sensitivity", 0.95))
    groups = [acquisition_group(r.path) for r in kept]
    metrics = {
        **evaluation_metrics(probs, targets, model.threshold),
        # where each threshold rule would land on these films' patients resampled: its reliability
        "threshold_spread": threshold_spread(
            probs,
            targets,
            target,
            seed=options.seed,
            patients=[patient_id(r.path) for r in kept],
            tolerance=float(model.meta.config.get("model", {}).get("plateau_tolerance", PLATEAU_TOLERANCE)),
        )
        if targets.unique().numel() == 2
        else {},
        # per file-naming family: a source or era the pooled figures can hide
        "groups": group_metrics(probs, targets, groups, model.threshold),
        "checkpoint": str(Path(ckpt_path).resolve()),
        "data_root": str(Path(root).resolve()),
        "split": split,
        "tta": tta,
        "classes": model.classes,
        "positive_class": model.meta.positive_class,
        # rows truth, columns prediction, both in this order
        "confusion_matrix_labels": [label_for(model, False), label_for(model, True)],
        "unreadable_files": [r.path for r in failed],
        "calibration": calibration_before_after(probs, targets, model.meta.temperature),
    }

    # every film's probability in double precision, exactly as is_positive reads it
    p, positive = probs.double().numpy(), targets.numpy().astype(bool)
    patients = [patient_id(r.path) for r in kept]
    bootstrap = PatientBootstrap.draw(patients, positive, options.draws, options.seed, options.level)
    metrics["intervals"] = _intervals(p, positive, model.threshold, bootstrap)
    per_group = group_intervals(
        p, positive, patients, groups, model.threshold, options.draws, options.seed, options.level
    )
    for group, row in metrics["groups"].items():
        row["intervals"] = per_group[group]
    metrics["flow"] = _flow(model, files, Path(root), split, failed)
    metrics["threshold_rule"] = threshold_origin(model.meta)
    metrics["decision_curve"] = _decision_curve(p, positive)
    if other is not None:
        metrics["comparison"] = compare_models(model, other, kept, positive, batch_size, tta, options)
    metrics["checkpoint_sha256"] = file_sha256(ckpt_path)
    # the packages and the commit that trained it (None: a checkpoint of an earlier pneumo)
    metrics["trained_with"] = model.meta.versions
    if model.meta.versions:
        made_with = ", ".join(f"{k} {v}" for k, v in model.meta.versions.items())
        log.info("%s was trained with %s", ckpt_path, made_with)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics["errors"] = _report_errors(model, kept, positive, output_dir, options.cam)
    # the MLflow run that trained the checkpoint gets the test figures (None: no run known or
    # reachable); an ensemble holds its first member's metadata, whose run is not the ensemble's
    trained_in = None if model.meta.ensemble else model.meta.trackers
    metrics["tracker"] = record_evaluation(trained_in, metrics, ckpt_path)
    write_text_atomically(output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_model_card(output_dir / "model_card.md", metrics, model.meta, options.card)
    figures = {
        "confusion_matrix": plot_confusion(
            metrics["confusion_matrix"], [label_for(model, False), label_for(model, True)], model.threshold
        ),
        "roc": plot_roc(probs, targets, metrics),
        "reliability": plot_reliability({name: metrics["calibration"][name] for name in ("before", "after")}),
        "decision_curve": plot_decision_curve(
            metrics["decision_curve"]["rows"], metrics["decision_curve"]["prevalence"]
        ),
    }
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(output_dir / "tensorboard")) as writer:
        for name, fig in figures.items():
            fig.savefig(output_dir / f"{name}.png", dpi=120)
            writer.add_figure(f"eval/{name}", fig)  # closes the figure
        for when in ("before", "after"):
            for figure in CALIBRATION_FIGURES:
                writer.add_scalar(f"eval/calibration_{when}/{figure}", metrics["calibration"][when][figure])
    log.info(
        "metrics.json, errors.csv, model_card.md, confusion_matrix.png, roc.png, reliability.png and "
        "decision_curve.png in %s",
        output_dir,
    )
    return metrics
