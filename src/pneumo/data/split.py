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


def patient_split(
    paths: Sequence[str | Path],
    labels: Sequence[int],
    val_fraction: float,
    seed: int,
) -> tuple[list[int], list[int]]:
    """Split sample indices into (train, val) by patient, stratified by class.

    Each patient takes the class of most of their images; within each class, patients are
    shuffled with ``seed`` and moved to validation until it holds ``val_fraction`` of that
    class's images (at least one patient per class when the class has two or more).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    by_patient: dict[str, list[int]] = defaultdict(list)
    for index, path in enumerate(paths):
        by_patient[patient_id(path)].append(index)

    patients_by_class: dict[int, list[str]] = defaultdict(list)
    for patient, indices in sorted(by_patient.items()):
        votes = [labels[i] for i in indices]
        patients_by_class[max(set(votes), key=votes.count)].append(patient)

    rng = random.Random(seed)
    val: list[int] = []
    for label in sorted(patients_by_class):
        patients = patients_by_class[label]
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
