"""The films of an evaluation, the way a study reports its participants: which files the split
holds, which were left out and why, how many patients remain per class, and whether any of
those patients trained or tuned the checkpoint.

Patients are read from file names by the project's one rule (``data.split.patient_id``); a
name that follows no Kermany pattern is its own patient, and the flow counts such films.

The checkpoint records its validation files one by one (``meta.val_files``) and its training
files only as a fingerprint (``meta.train_files``: count and SHA-256). The training files are
therefore rebuilt the way training listed them (``XrayDataModule.split_samples`` with the
checkpoint's split settings), under the evaluated ``data.root`` and under the run's own, and
used only where their fingerprint matches the recorded one: then the overlap of patients is
exact. Where no rebuild matches, the flow says so, and checks what is recorded.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumo.artifacts.checkpoint import CheckpointMeta
from pneumo.data.dataset import Sample, list_split
from pneumo.data.provenance import files_fingerprint, validation_samples
from pneumo.data.split import known_patient_name, patient_id
from pneumo.errors import PneumoError, printable

PATIENT_RULE = (
    "patients read from file names (pneumo.data.split.patient_id: personNNN_..., IM-NNNN-..., "
    "NORMAL2-IM-NNNN-...); a name of no such pattern is its own patient"
)
# Why a file beside the films was not read, where the listing gives no reason of its own.
NOT_A_FILM = "not an image file (by its extension or a hidden name): not read"
# How many example files a warning or metrics.json names.
EXAMPLES = 5


@dataclass
class SplitFiles:
    """The labelled films of the evaluated split, the files beside them that are not films,
    and where they came from."""

    samples: list[Sample]
    source: str
    # file -> why it is not a film (not an image file, hidden, outside the class folders, ...)
    skipped: dict[Path, str] = field(default_factory=dict)


def list_split_files(meta: CheckpointMeta, ckpt_path: str | Path, root: Path, split: str) -> SplitFiles:
    """The films of ``split``: ``val`` is exactly the files the run validated on; any other split
    is the folder ``root/split``, read as training reads folders (stray non-image files are
    skipped, and listed)."""
    if split == "val" and is_cross_validation(meta):
        raise PneumoError(
            f"{ckpt_path} averages the folds of a cross-validation and has no validation films (every "
            "film trained some member): read its out-of-fold figures in oof.csv and cv.json beside it, "
            "or evaluate it on films outside train/ (data.split=test)"
        )
    if split == "val":
        samples = validation_samples(meta, root, ckpt_path)
        return SplitFiles(samples, f"the {len(samples)} validation files recorded in the checkpoint")
    folder = root / split
    if not folder.is_dir():
        raise PneumoError(f"split folder not found: {folder} (data.root, data.split)")
    listing = list_split(folder, meta.classes)
    if listing.problems:
        raise PneumoError(listing.problems[0])
    # the listing's own reason for each file where it gives one
    reasons: dict[Path, str] = getattr(listing, "reasons", {})
    skipped = {path: reasons.get(path, NOT_A_FILM) for path in listing.ignored}
    return SplitFiles(listing.samples, f"the class folders of {folder}", skipped)


def _by_class(labels: Sequence[int], classes: Sequence[str]) -> dict[str, int]:
    counts = Counter(labels)
    return {name: int(counts.get(index, 0)) for index, name in enumerate(classes)}


def _class_of_file(path: Path, folder: Path, classes: Sequence[str]) -> str | None:
    """The class folder a skipped file lies in, if any."""
    try:
        first = path.relative_to(folder).parts[0]
    except (ValueError, IndexError):
        return None
    return first if first in classes else None


def film_flow(
    files: SplitFiles,
    split_folder: Path,
    classes: Sequence[str],
    left_out: dict[str, str],
) -> dict[str, Any]:
    """From the split's files to the films counted: found, skipped, left out (with reasons), and
    what remains per class in films and patients.

    ``left_out`` maps a film's path to why it was not evaluated (it could not be decoded).
    """
    found = files.samples
    kept = [s for s in found if str(s.path) not in left_out]
    by_class: dict[str, dict[str, int]] = {}
    for index, name in enumerate(classes):
        members = [s for s in kept if s.label == index]
        by_class[name] = {"films": len(members), "patients": len({patient_id(s.path) for s in members})}
    patient_classes: dict[str, set[int]] = {}
    for sample in kept:
        patient_classes.setdefault(patient_id(sample.path), set()).add(sample.label)
    label_of = {str(s.path): s.label for s in found}
    return {
        "source": files.source,
        "found": {"films": len(found), "by_class": _by_class([s.label for s in found], classes)},
        "skipped_files": [
            {"path": str(path), "class": _class_of_file(path, split_folder, classes), "reason": reason}
            for path, reason in sorted(files.skipped.items())
        ],
        "left_out": [
            {"path": path, "class": classes[label_of[path]], "reason": reason}
            for path, reason in left_out.items()
        ],
        "left_out_by_class": _by_class([label_of[path] for path in left_out], classes),
        "evaluated": {
            "films": len(kept),
            "patients": len(patient_classes),
            "by_class": by_class,
            "patients_in_both_classes": sum(len(labels) > 1 for labels in patient_classes.values()),
            "films_without_patient_id": sum(not known_patient_name(s.path) for s in kept),
        },
        "patient_rule": PATIENT_RULE,
    }


@contextmanager
def _quiet(name: str):
    """Silence one logger for a while (a rebuilt split's notices are not this command's)."""
    logger = logging.getLogger(name)
    before = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = before


@dataclass
class TrainingFiles:
    """The checkpoint's training films, rebuilt and matched to its fingerprint, or why not."""

    samples: list[Sample] | None
    how: str


def is_cross_validation(meta: CheckpointMeta) -> bool:
    """Whether the checkpoint is a cross-validation's fold ensemble (``cv.ckpt``)."""
    return isinstance(meta.ensemble, dict) and "cross_validation" in meta.ensemble


def rebuild_training_files(meta: CheckpointMeta, roots: Sequence[Path]) -> TrainingFiles:
    """The run's training files, listed as training listed them, under each of ``roots`` in turn,
    kept only where their fingerprint is the one the checkpoint records."""
    recorded = meta.train_files
    if recorded is None:
        return TrainingFiles(None, "the checkpoint predates recorded training files")
    from pneumo.data.datamodule import XrayDataModule

    data = meta.config.get("data", {}) if isinstance(meta.config.get("data"), dict) else {}
    # a fold run trained on the other folds; a cross-validation's ensemble (cv.ckpt) on them all
    cross_validation = is_cross_validation(meta)
    folds = data.get("folds") if isinstance(data.get("folds"), int) else None
    fold = 0 if cross_validation and folds is not None else data.get("fold") if folds is not None else None
    tried: list[str] = []
    for root in dict.fromkeys(roots):  # each once, in order
        try:
            with _quiet("pneumo.data.datamodule"):
                datamodule = XrayDataModule(
                    root=str(root),
                    classes=meta.classes,
                    positive_class=meta.positive_class,
                    val_fraction=float(data.get("val_fraction", 0.1)),
                    val_holdout=str(data.get("val_holdout", "random")),
                    min_val_images=int(data.get("min_val_images", 100)),
                    seed=int(data.get("seed", meta.config.get("seed", 42))),
                    manifest=data.get("manifest"),
                    folds=folds,
                    fold=fold,
                )
                train, val = datamodule.split_samples()
                if cross_validation:
                    train = train + val  # every film of train/ trained some member
        except (PneumoError, OSError, ValueError, TypeError) as err:
            tried.append(f"{root} ({printable(str(err))[:120]})")
            continue
        if files_fingerprint(train, datamodule.root, meta.classes) == recorded:
            return TrainingFiles(
                train,
                f"rebuilt under {datamodule.root} with the checkpoint's split settings; their "
                f"fingerprint matches the recorded one ({recorded['count']} files, sha256 "
                f"{str(recorded['sha256'])[:12]}...)",
            )
        tried.append(f"{root} ({len(train)} files, another fingerprint)")
    return TrainingFiles(
        None,
        f"the checkpoint records its {recorded.get('count', '?')} training files as a fingerprint only "
        f"(count and SHA-256), and no rebuild matched it: {'; '.join(tried) or 'no data root to try'}",
    )


def _overlap(evaluated: Sequence[Sample], others: Sequence[str | Path]) -> dict[str, Any]:
    """The evaluated patients that also have a film among ``others``, and their films."""
    theirs = {patient_id(path) for path in others}
    shared = sorted({patient_id(s.path) for s in evaluated} & theirs)
    films = [str(s.path) for s in evaluated if patient_id(s.path) in theirs]
    return {"patients": len(shared), "films": len(films), "examples": shared[:EXAMPLES]}


def _resolvable(meta: CheckpointMeta, roots: Sequence[Path]) -> list[Path]:
    """The checkpoint's validation files that exist under the first of ``roots`` holding them."""
    assert meta.val_files is not None
    for root in dict.fromkeys(roots):
        found = [Path(root) / path for path, _ in meta.val_files if (Path(root) / path).is_file()]
        if found:
            return found
    return []


def film_sha256(path: str | Path) -> str | None:
    """A film's SHA-256, or None when it cannot be read (it is then reported elsewhere)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def identical_films(evaluated: Sequence[Sample], others: Sequence[str | Path]) -> dict[str, Any]:
    """The evaluated films whose bytes equal a film among ``others``, whatever their names: a
    training film copied into test/ under a new name is the same film, and the patient rule,
    which reads names, cannot see it."""
    theirs: dict[str, str] = {}
    for path in others:
        digest = film_sha256(path)
        if digest is not None:
            theirs.setdefault(digest, str(path))
    pairs = [(str(s.path), theirs[d]) for s in evaluated if (d := film_sha256(s.path)) in theirs]
    return {
        "identical_films": len(pairs),
        "identical_examples": [f"{mine} = {other}" for mine, other in pairs[:EXAMPLES]],
    }


def _identical_warning(found: dict[str, Any], whose: str) -> list[str]:
    """One warning line when evaluated films are byte-identical copies of ``whose`` films."""
    if not found["identical_films"]:
        return []
    return [
        f"{found['identical_films']} evaluated films are byte-identical to the checkpoint's {whose} films "
        f"under other names, e.g. {'; '.join(found['identical_examples'][:2])}: remove them from the "
        "evaluated split, these figures are not a held-out measurement"
    ]


def _recalibration_overlap(
    meta: CheckpointMeta, evaluated: Sequence[Sample]
) -> tuple[dict[str, Any], list[str]] | None:
    """For a checkpoint recalibrated on a site's films: which evaluated films are among them, by
    content (the record keeps each film's SHA-256), with a warning when any are; None otherwise."""
    record = (meta.calibration or {}).get("recalibration")
    if not isinstance(record, dict):
        return None
    digests = record.get("films_sha256")
    if not isinstance(digests, list):
        return {"checked": False, "how": "the recalibration record predates recorded film digests"}, [
            "could not check these films against the films the threshold and temperature were refitted on "
            f"({record.get('site')}): the recalibration record predates recorded film digests"
        ]
    fitted, site = set(digests), record.get("site")
    inside = [str(s.path) for s in evaluated if film_sha256(s.path) in fitted]
    found = {
        "checked": True,
        "how": f"by content against the {len(fitted)} films pneumo-recalibrate fitted on ({site})",
        "films": len(inside),
        "examples": inside[:EXAMPLES],
    }
    if not inside:
        return found, []
    return found, [
        f"{len(inside)} of the evaluated films, e.g. {', '.join(inside[:2])}, are among the films the "
        f"threshold and temperature were fitted on ({site}, pneumo-recalibrate): in-sample, these "
        "figures are not a held-out measurement"
    ]


def overlap_report(
    meta: CheckpointMeta, split: str, evaluated: Sequence[Sample], roots: Sequence[Path]
) -> tuple[dict[str, Any], list[str]]:
    """Whether any evaluated patient trained the checkpoint (``training``) or chose its
    threshold and temperature (``validation``); and a warning for each overlap found or
    check that could not be made."""
    warnings: list[str] = []
    training = rebuild_training_files(meta, roots)
    report: dict[str, Any] = {}
    if training.samples is None:
        report["training"] = {"checked": False, "how": training.how}
        warnings.append(f"could not check these patients against the training patients: {training.how}")
    else:
        shared = _overlap(evaluated, [s.path for s in training.samples])
        shared.update(identical_films(evaluated, [s.path for s in training.samples]))
        warnings += _identical_warning(shared, "training")
        report["training"] = {
            "checked": True,
            "how": training.how,
            "training_films": len(training.samples),
            "training_by_class": _by_class([s.label for s in training.samples], meta.classes),
            "training_patients": len({patient_id(s.path) for s in training.samples}),
            **shared,
        }
        if shared["patients"]:
            warnings.append(
                f"{shared['patients']} of the evaluated patients ({shared['films']} films) are among the "
                f"checkpoint's training patients, e.g. {', '.join(shared['examples'])}: these figures "
                "are not a held-out measurement"
            )
    recalibrated = _recalibration_overlap(meta, evaluated)
    if recalibrated is not None:
        report["recalibration"], warning = recalibrated
        warnings += warning
    if split == "val":
        report["validation"] = {
            "checked": False,
            "how": "the evaluated films are the validation files, on which the threshold and the "
            "temperature were chosen",
        }
    elif meta.val_files is None:
        report["validation"] = {"checked": False, "how": "the checkpoint predates recorded validation files"}
    else:
        shared = _overlap(evaluated, [path for path, _ in meta.val_files])
        shared.update(identical_films(evaluated, _resolvable(meta, roots)))
        warnings += _identical_warning(shared, "validation")
        report["validation"] = {
            "checked": True,
            "how": f"against the {len(meta.val_files)} validation files recorded in the checkpoint",
            **shared,
        }
        if shared["patients"]:
            warnings.append(
                f"{shared['patients']} of the evaluated patients ({shared['films']} films) are among the "
                f"checkpoint's validation patients, e.g. {', '.join(shared['examples'])}: the threshold "
                "and the calibration were chosen on them"
            )
    return report, warnings
