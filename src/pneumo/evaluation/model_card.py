"""model_card.md: what a reader needs to cite or question a model, from the checkpoint and the
evaluation alone (Mitchell et al. 2019, "Model Cards for Model Reporting").

The card is rendered from ``templates/model_card.md.j2`` (shipped in the package) with Jinja2's
``StrictUndefined``: a name the template uses and the context lacks stops the rendering, so no
placeholder is ever left unfilled. What only the user knows (authors, contact, the code's
commit, notes) comes from pneumo-eval's ``card.*`` keys; one left empty is written as "not
stated", never as a blank.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from pneumo.artifacts.checkpoint import CheckpointMeta
from pneumo.artifacts.output import write_text_atomically
from pneumo.data.split import known_patient_name
from pneumo.errors import PneumoError
from pneumo.evaluation.statistics import FEW_PATIENTS, REPORTED

TEMPLATE = "model_card.md.j2"
# The keys a user may set under card: in conf/eval.yaml.
CARD_KEYS = ("title", "authors", "contact", "commit", "date", "notes")
NOT_STATED = "not stated"
FIGURE_NAMES = {
    "acc": "accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "precision": "precision (PPV)",
    "npv": "NPV",
    "f1": "F1",
}
# What the template must never leave in its output: Jinja syntax (the filters write "-" for a
# missing figure, and StrictUndefined stops at a missing name).
_LEFTOVER = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}")


def number(value: Any, digits: int = 4) -> str:
    """A figure with ``digits`` decimals; "-" where there is nothing to count (NaN, None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}f}"


def interval(bounds: list[float] | None, digits: int = 4) -> str:
    """``[low, high]``, or "-" where there is no interval."""
    if not bounds or any(b is None or math.isnan(b) for b in bounds):
        return "-"
    return f"[{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def bootstrap_cell(figure: dict[str, Any], draws: int) -> str:
    """A figure's bootstrap interval, followed by the number of draws it was read off where the
    figure was undefined in some (``statistics.usable_draws``)."""
    text = interval(figure.get("bootstrap"))
    usable = figure.get("bootstrap_draws")
    if text != "-" and usable is not None and usable < draws:
        text += f" ({usable} of {draws} draws)"
    return text


def bold(text: str, quoted: bool) -> str:
    """``text`` in bold where it is the interval to quote."""
    return f"**{text}**" if quoted and text != "-" else text


def _architecture(meta: CheckpointMeta) -> str:
    if meta.ensemble is not None:
        return (
            f"an ensemble of {len(meta.ensemble['members'])} ResNet18s: the mean of the members' own "
            "(uncalibrated) probabilities, calibrated by one temperature fitted on their shared "
            "validation films (pneumo-ensemble)"
        )
    return "ResNet18 (torchvision), its last layer replaced by a two-class head"


def _weights(model_cfg: dict[str, Any]) -> str:
    weights = model_cfg.get("weights", "IMAGENET1K_V1") if model_cfg else None
    if weights is None:
        return "trained from scratch (no pretrained weights)"
    if str(weights).startswith("IMAGENET"):
        return f"started from torchvision's ImageNet weights ({weights})"
    return f"started from the weights file {weights}"


def _recipe(config: dict[str, Any]) -> list[str]:
    """The settings a reader needs to reproduce or judge the training, one line each."""
    data = config.get("data") or {}
    model = config.get("model") or {}
    trainer = config.get("trainer") or {}
    callbacks = config.get("callbacks") or {}
    optimizer = model.get("optimizer") or {}
    scheduler = model.get("scheduler") or {}
    lines = []
    if config.get("task_name"):
        lines.append(f"experiment (task name): {config['task_name']}")
    if "seed" in config:
        lines.append(f"seed: {config['seed']}")
    if data:
        lines.append(
            f"input: {data.get('image_size', '?')} px greyscale, class balance by "
            f"{data.get('balance', '?')}, batch size {data.get('batch_size', '?')}"
        )
        augment = data.get("augment") or {}
        active = {k: v for k, v in augment.items() if v not in (0, 0.0, False, None, [1.0, 1.0])}
        lines.append(
            "augmentation: " + (", ".join(f"{k} {v}" for k, v in active.items()) if active else "none")
        )
    if optimizer:
        name = str(optimizer.get("_target_", "?")).rsplit(".", 1)[-1]
        lines.append(
            f"optimiser: {name}, learning rate {optimizer.get('lr', '?')}, weight decay "
            f"{optimizer.get('weight_decay', '?')}"
        )
    if scheduler:
        lines.append(f"schedule: {str(scheduler.get('_target_', '?')).rsplit('.', 1)[-1]}")
    if model:
        smoothing, mixup = model.get("label_smoothing", 0.0), model.get("mixup_alpha", 0.0)
        lines.append(f"label smoothing {smoothing}, mixup alpha {mixup}")
    if trainer:
        lines.append(
            f"epochs: at most {trainer.get('max_epochs', '?')}, precision {trainer.get('precision', '?')}"
        )
    averaging = callbacks.get("weight_averaging") if isinstance(callbacks, dict) else None
    lines.append(f"weight averaging: {'on' if averaging else 'off'}")
    return lines


def _user(card: dict[str, Any], key: str) -> str:
    value = card.get(key)
    return NOT_STATED if value in (None, "", []) else str(value)


def _notes(card: dict[str, Any]) -> list[str]:
    notes = card.get("notes")
    if notes in (None, "", []):
        return []
    return [str(n) for n in notes] if isinstance(notes, (list, tuple)) else [str(notes)]


def _commit(card: dict[str, Any], meta: CheckpointMeta) -> str:
    """``card.commit`` when given, else the git commit the checkpoint was trained from."""
    if card.get("commit"):
        return _user(card, "commit")
    recorded = (meta.versions or {}).get("git_commit")
    if recorded:
        return f"`{recorded}` (recorded at training)"
    return "not recorded in the checkpoint (set card.commit)"


def _versions(meta: CheckpointMeta) -> str:
    """The package versions the checkpoint was trained with, or what to do without them."""
    versions = {k: v for k, v in (meta.versions or {}).items() if k != "git_commit"}
    if not versions:
        return "not recorded in the checkpoint (trained by an earlier pneumo)"
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def _split_rule(meta: CheckpointMeta) -> str:
    data = meta.config.get("data") or {}
    if not data:
        return "not recorded (the checkpoint holds no config)"
    manifest = (data.get("manifest") or {}).get("file")
    source = f"the manifest {manifest}" if manifest else f"the class folders under {data.get('root', '?')}"
    holdout = data.get("val_holdout", "random")
    order = (
        "the earliest patients of each naming family"
        if holdout == "earliest"
        else f"patients shuffled with seed {data.get('seed', '?')}"
    )
    return (
        f"films listed from {source}; validation is the official val/ folder when it holds at least "
        f"{data.get('min_val_images', '?')} films, otherwise {data.get('val_fraction', '?')} of each class's "
        f"training films carved out by patient ({order}), so no child has films on both sides"
    )


def _fitted_limitation(origin: dict[str, Any]) -> str:
    """Which films the operating point was fitted on, and what that means for these figures."""
    exploratory = "figures at 0.5 and the decision curve are exploratory."
    if origin["chosen_on"] == "site":
        return (
            "The threshold and the calibration were refitted on a site's films (pneumo-recalibrate), not on "
            "the run's validation films; evaluated on those same films they are in-sample; " + exploratory
        )
    if origin["chosen_on"] == "out-of-fold":
        return (
            "The threshold and the calibration were fitted on the out-of-fold probabilities of single fold "
            "models, not of this averaged ensemble, whose own operating point nothing held out has measured; "
            + exploratory
        )
    return "The threshold and the calibration were chosen on the validation films; " + exploratory


def _limitations(metrics: dict[str, Any], meta: CheckpointMeta, kermany: bool) -> list[str]:
    """What the figures cannot show, from this evaluation's own numbers."""
    flow = metrics["flow"]
    evaluated = flow["evaluated"]
    out = []
    if kermany:
        out.append(
            "One centre, retrospective: every film comes from Guangzhou Women and Children's Medical "
            "Center (Kermany et al. 2018). The evaluated films come from the same centre, so these "
            "figures are not an external validation; performance on other hospitals, scanners, ages "
            "or populations is unknown."
        )
        out.append(
            "Class and source coincide in Kermany's file naming (normal films are IM- / NORMAL2-IM-, "
            "pneumonia films person..._bacteria_ / _virus_): a model can learn the source as well as the "
            "disease, and the per-group figures cannot separate the two, as each group holds one class."
        )
    out.append(
        "Labels are image-level diagnoses from the archive's folders; there is no lateral view, no "
        "clinical information and no reference standard beyond the archive's grading."
    )
    out.append(
        f"Patients are read from file names; {evaluated['films_without_patient_id']} of the "
        f"{evaluated['films']} evaluated films carry no recognised patient id and count as their own "
        "patient. Wilson intervals count films as independent; the bootstrap intervals resample "
        "patients, keeping a child's films together. The interval to quote is in bold: Wilson where "
        "the bootstrap collapses (k is 0 or n: every draw gives the same value) or the class the "
        f"figure counts has {FEW_PATIENTS} patients or fewer (the bootstrap then covers "
        "less than it claims), the patient bootstrap otherwise; F1 and AUROC have the bootstrap only."
    )
    prevalence = metrics["decision_curve"]["prevalence"]
    out.append(
        f"Precision, NPV and net benefit depend on prevalence: this split's is {prevalence:.3f}, far from "
        "that of most clinical settings; sensitivity, specificity and AUROC do not."
    )
    out.append(_fitted_limitation(metrics["threshold_rule"]))
    overlap = flow["overlap"]
    if not overlap["training"]["checked"]:
        out.append(
            "Whether evaluated patients were also training patients could not be checked: "
            + overlap["training"]["how"]
            + "."
        )
    out.extend(flow["warnings"])
    if metrics.get("tta"):
        out.append(
            "Evaluated with test-time augmentation; the threshold was chosen without it. The calibration "
            "table's first column is then the mean of the calibrated views with the temperature taken "
            "off its log-odds, not any output of the network."
        )
    return out


# Where a checkpoint's temperature (and threshold) were fitted, in the card's words.
_FITTED_ON = {
    "site": "a site's own films (pneumo-recalibrate)",
    "out-of-fold": "the out-of-fold films of a cross-validation",
}


def card_context(metrics: dict[str, Any], meta: CheckpointMeta, card: dict[str, Any]) -> dict[str, Any]:
    """Everything the template shows, as plain values."""
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise PneumoError(f"card has no key {unknown[0]!r}: use {', '.join(CARD_KEYS)}")
    config = meta.config
    model_cfg = config.get("model") or {}
    negative, positive = metrics["confusion_matrix_labels"]
    flow = metrics["flow"]
    recorded = [path for path, _ in meta.val_files or []]
    manifest = ((config.get("data") or {}).get("manifest") or {}).get("file")
    kermany = bool(recorded) and not manifest and all(known_patient_name(p) for p in recorded)
    intervals = metrics["intervals"]
    figures = [
        {
            "name": FIGURE_NAMES[key],
            "stored": intervals["at_threshold"]["figures"][key],
            "half": intervals["at_0.5"]["figures"][key],
        }
        for key in REPORTED
    ]
    train_files = meta.train_files or {}
    return {
        "title": card.get("title") or f"pneumo {negative} / {positive} classifier of chest X-rays",
        "date": str(card.get("date") or dt.date.today().isoformat()),
        "authors": _user(card, "authors"),
        "contact": _user(card, "contact"),
        "commit": _commit(card, meta),
        "versions": _versions(meta),
        "notes": _notes(card),
        "architecture": _architecture(meta),
        "weights": _weights(model_cfg),
        "recipe": _recipe(config),
        "checkpoint": metrics["checkpoint"],
        "sha256": metrics["checkpoint_sha256"],
        "classes": meta.classes,
        "negative": negative,
        "positive": positive,
        "threshold": metrics["threshold_rule"],
        "temperature": meta.temperature,
        "fitted_on": _FITTED_ON.get(str((meta.calibration or {}).get("fitted_on")), "validation"),
        "recalibration": (meta.calibration or {}).get("recalibration"),
        "kermany": kermany,
        "training": {
            "films": train_files.get("count"),
            "fingerprint": train_files.get("sha256"),
            "rebuilt": flow["overlap"]["training"],
            "validation_films": len(recorded),
            "validation_by_class": metrics["threshold_rule"]["validation_by_class"],
            "split_rule": _split_rule(meta),
        },
        "split": metrics["split"],
        "data_root": metrics["data_root"],
        "tta": metrics["tta"],
        "flow": flow,
        "n": metrics["n"],
        "intervals": intervals,
        "figures": figures,
        "groups": metrics["groups"],
        "calibration": metrics["calibration"],
        "decision_curve": metrics["decision_curve"],
        "comparison": metrics.get("comparison"),
        "errors": metrics["errors"],
        "limitations": _limitations(metrics, meta, kermany),
    }


def render_model_card(context: dict[str, Any]) -> str:
    """The card's Markdown; an undefined name, or anything left unfilled, raises."""
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # Markdown, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["num"] = number
    environment.filters["ci"] = interval
    environment.filters["boot"] = bootstrap_cell
    environment.filters["bold"] = bold
    source = resources.files("pneumo.evaluation").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    text = environment.from_string(source).render(**context)
    leftover = _LEFTOVER.search(text)
    if leftover:
        start = max(leftover.start() - 60, 0)
        raise ValueError(
            f"the model card holds an unfilled value near: {text[start : leftover.end() + 20]!r}"
        )
    return text


def write_model_card(
    path: Path, metrics: dict[str, Any], meta: CheckpointMeta, card: dict[str, Any] | None = None
) -> str:
    """Render the card for ``metrics`` and write it to ``path``; return its text."""
    text = render_model_card(card_context(metrics, meta, dict(card or {})))
    write_text_atomically(path, text)
    return text
