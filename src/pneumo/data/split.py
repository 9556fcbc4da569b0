"""Patient-level, stratified train/validation splits.

Kermany file names carry the patient (see ``patient_id``); several films of one child
must land on the same side of a split, or validation measures memory, not diagnosis.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pneumo.errors import PneumoError

# The fewest patients of each class a validation split must hold. With one, a single child
# sets the threshold, the AUROC and which epoch is kept (best.ckpt, early stopping): the
# figures measure that child, not the model.
MIN_VAL_PATIENTS = 2

# Every file name in the Kermany/Kaggle chest_xray archive (train, val and test splits):
#   personNNN_bacteria_MMM, personNNN_virus_MMM, personNNN_virus_MMM_K   -> personNNN
#   IM-NNNN-0001, IM-NNNN-0001-0002 (a further film of the same visit)   -> IM-NNNN
#   NORMAL2-IM-NNNN-0001, NORMAL2-IM-NNNN-0001-0002                      -> NORMAL2-IM-NNNN
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),
    re.compile(r"^((?:[A-Z0-9]+-)?IM-\d+)(?:-\d+)+$", re.IGNORECASE),
)


def known_patient_name(path: str | Path) -> bool:
    """Whether the file name follows one of the archive's naming patterns above."""
    stem = Path(path).stem
    return any(pattern.match(stem) for pattern in _PATIENT_PATTERNS)


def patient_id(path: str | Path) -> str:
    """The patient a file belongs to, read from its name; unknown names are their own patient."""
    stem = Path(path).stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1).lower()
    return stem.lower()


HOLDOUTS = ("random", "earliest")


def _patient_number(patient: str) -> tuple[str, int]:
    """(naming family, number): ``normal2-im-0587`` -> (``normal2-im-``, 587)."""
    match = re.match(r"^(.*?)(\d+)$", patient)
    return (match.group(1), int(match.group(2))) if match else (patient, 0)


# The naming families' groups as pneumo-eval reports them; ``person`` films split by kind.
_FAMILY_GROUPS = {"im-": "IM-", "normal2-im-": "NORMAL2-IM-"}
_PERSON_KIND = re.compile(r"^person\d+_(bacteria|virus)_", re.IGNORECASE)


def acquisition_group(path: str | Path) -> str | None:
    """The film's acquisition group, read from its name: ``IM-``, ``NORMAL2-IM-``,
    ``person bacteria`` or ``person virus``; None for a name that follows none of these.

    The families come from different sources and eras, so a model can do worse on one of
    them than the pooled figures show.
    """
    if not known_patient_name(path):
        return None
    family = _patient_number(patient_id(path))[0]
    if family == "person":
        kind = _PERSON_KIND.match(Path(path).stem)
        return f"person {kind.group(1).lower()}" if kind else None
    return _FAMILY_GROUPS.get(family)


def _earliest_first(patients: list[str]) -> list[str]:
    """Patients ordered by how early they come in their naming family.

    Kermany's patient numbers grow with acquisition, and each family (``person``, ``IM-``,
    ``NORMAL2-IM-``) comes from another source: sorting by the relative position within the
    family takes the earliest share of every family, the way a held-out cohort would.
    """
    families: dict[str, list[str]] = defaultdict(list)
    for patient in patients:
        families[_patient_number(patient)[0]].append(patient)
    position: dict[str, float] = {}
    for members in families.values():
        members.sort(key=lambda p: _patient_number(p)[1])
        position.update({p: rank / len(members) for rank, p in enumerate(members)})
    return sorted(patients, key=lambda p: (position[p], p))


def _patients(
    paths: Sequence[str | Path], labels: Sequence[int], patients: Sequence[str] | None
) -> tuple[dict[str, list[int]], dict[int, list[str]]]:
    """The films of each patient (their indices), and the patients of each class, in name order:
    a patient belongs to the class most of their films have. ``patients`` names each film's
    patient (a manifest's column); without it the file-name rule (``patient_id``) does."""
    if patients is not None and len(patients) != len(paths):
        raise ValueError(f"{len(patients)} patients for {len(paths)} paths")
    by_patient: dict[str, list[int]] = defaultdict(list)
    for index, path in enumerate(paths):
        by_patient[patient_id(path) if patients is None else patients[index]].append(index)
    patients_by_class: dict[int, list[str]] = defaultdict(list)
    for patient, indices in sorted(by_patient.items()):
        votes = [labels[i] for i in indices]
        patients_by_class[max(set(votes), key=votes.count)].append(patient)
    return by_patient, patients_by_class


def patient_split(
    paths: Sequence[str | Path],
    labels: Sequence[int],
    val_fraction: float,
    seed: int,
    holdout: str = "random",
    patients: Sequence[str] | None = None,
) -> tuple[list[int], list[int]]:
    """Split sample indices into (train, val) by patient, stratified by class.

    ``patients`` gives each sample's patient explicitly (a manifest's patient column);
    without it the patient is read from the file name (``patient_id``).
    Each patient takes the class of most of their images; within each class, patients are
    ordered (``holdout="random"``: shuffled with ``seed``; ``"earliest"``: the earliest
    patients of each naming family first, a shifted cohort like a later test set) and moved
    to validation until it holds ``val_fraction`` of that class's images (at least one
    patient per class when the class has two or more).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if holdout not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {HOLDOUTS}, got {holdout!r}")
    by_patient, patients_by_class = _patients(paths, labels, patients)

    rng = random.Random(seed)
    val: list[int] = []
    for label in sorted(patients_by_class):
        patients = patients_by_class[label]
        if holdout == "earliest":
            patients = _earliest_first(patients)
        else:
            rng.shuffle(patients)
        class_size = sum(len(by_patient[p]) for p in patients)
        target = val_fraction * class_size
        taken = 0
        for patient in patients[:-1]:  # always leave one patient for training
            if taken >= target or (taken and taken + len(by_patient[patient]) > target * 1.5):
                break
            val.extend(by_patient[patient])
            taken += len(by_patient[patient])
    val_set = set(val)
    train = [i for i in range(len(paths)) if i not in val_set]
    return train, sorted(val)


def patient_folds(
    paths: Sequence[str | Path],
    labels: Sequence[int],
    folds: int,
    seed: int,
    patients: Sequence[str] | None = None,
) -> list[int]:
    """Each sample's fold (0 to ``folds - 1``) for k-fold cross-validation, by patient and
    stratified by class: every film of a patient in one fold, each class spread evenly.

    Patients are grouped and take the class of most of their films, as in ``patient_split``;
    within each class they are shuffled with ``seed`` and dealt, one at a time, to the fold
    holding the fewest films of that class so far (the lowest-numbered on a tie). The
    assignment depends on the films, ``folds`` and ``seed`` only, so every fold of a sweep
    computes the same one and trains on the films of the others.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be a whole number of 2 or more, got {folds!r}")
    by_patient, patients_by_class = _patients(paths, labels, patients)
    rng = random.Random(seed)
    assignment = [0] * len(paths)
    for label in sorted(patients_by_class):
        members = patients_by_class[label]
        rng.shuffle(members)
        films = [0] * folds
        for patient in members:
            fold = films.index(min(films))
            films[fold] += len(by_patient[patient])
            for index in by_patient[patient]:
                assignment[index] = fold
    return assignment


def check_validation_patients(
    labels: Sequence[int], patients: Sequence[str], classes: Sequence[str], source: str, remedies: str
) -> None:
    """Stop, in one line, when a class has fewer than ``MIN_VAL_PATIENTS`` patients among the
    validation films (``labels`` and ``patients`` run in parallel, one per film); ``source``
    says where the films came from, ``remedies`` what the user can do."""
    by_class: dict[int, set[str]] = defaultdict(set)
    films: dict[int, int] = defaultdict(int)
    for label, patient in zip(labels, patients):
        by_class[label].add(patient)
        films[label] += 1
    short = [(name, len(by_class[label]), films[label]) for label, name in enumerate(classes)]
    short = [item for item in short if item[1] < MIN_VAL_PATIENTS]
    if not short:
        return
    held = " and ".join(
        f"{name} has {n} patient{'s' if n != 1 else ''} ({f} film{'s' if f != 1 else ''})"
        for name, n, f in short
    )
    raise PneumoError(
        f"the validation split cannot measure the model: {held} in {source}; each class needs films of "
        f"at least {MIN_VAL_PATIENTS} patients there (the threshold, AUROC and best.ckpt are chosen on "
        f"them): {remedies}"
    )
