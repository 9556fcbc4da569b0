import hashlib
from collections import Counter, defaultdict

import pytest

from pneumo.data.split import known_patient_name, patient_id, patient_split
from tests.helpers import SHARED_TRAIN, needs_shared


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("IM-0115-0001.jpeg", "im-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "normal2-im-1427"),
        ("NORMAL2-IM-1427-0002.jpeg", "normal2-im-1427"),
        ("IM-0429-0001-0002.jpeg", "im-0429"),
        ("NORMAL2-IM-0587-0001-0001.jpeg", "normal2-im-0587"),
        ("person1_virus_6_2.jpeg", "person1"),
        ("scan.png", "scan"),
    ],
)
def test_patient_id_from_kermany_names(name, patient):
    assert patient_id(name) == patient


def _check_split(paths, labels, val_fraction, seed, holdout="random"):
    train, val = patient_split(paths, labels, val_fraction, seed, holdout)
    assert sorted(train + val) == list(range(len(paths)))
    train_patients = {patient_id(paths[i]) for i in train}
    val_patients = {patient_id(paths[i]) for i in val}
    assert not train_patients & val_patients
    return train, val


def test_split_keeps_patients_together_and_is_seeded():
    paths = [f"person{p}_bacteria_{i}.jpeg" for p in range(30) for i in range(p % 3 + 1)]
    paths += [f"IM-{p:04d}-000{i}.jpeg" for p in range(20) for i in range(1, 3)]
    labels = [1 if p.startswith("person") else 0 for p in paths]
    train, val = _check_split(paths, labels, 0.2, seed=1)
    assert (train, val) == patient_split(paths, labels, 0.2, seed=1)
    assert (train, val) != patient_split(paths, labels, 0.2, seed=2)
    counts = Counter(labels[i] for i in val)
    assert counts[0] > 0 and counts[1] > 0


@needs_shared
def test_split_of_the_real_train_set_is_stratified_by_patient():
    paths = sorted(SHARED_TRAIN.glob("*/*.jpeg"))
    labels = [int(p.parent.name == "PNEUMONIA") for p in paths]
    train, val = _check_split(paths, labels, 0.1, seed=42)
    share = len(val) / len(paths)
    assert 0.08 < share < 0.12
    val_pneumonia = sum(labels[i] for i in val) / len(val)
    assert abs(val_pneumonia - sum(labels) / len(labels)) < 0.03


def _independent_patient(stem: str) -> str:
    """The patient by a rule written apart from ``patient_id``: split the name on its separators."""
    if stem.startswith("person"):
        return stem.split("_")[0].lower()
    parts = stem.split("-")  # [NORMAL2,] IM, patient, film[, further film]
    return "-".join(parts[: parts.index("IM") + 2]).lower()


@needs_shared
@pytest.mark.parametrize("seed", [1, 42])
def test_real_split_shares_no_patient_prefix_or_bytes_across_sides(seed):
    paths = sorted(SHARED_TRAIN.glob("*/*.jpeg"))
    assert all(known_patient_name(p) for p in paths)
    labels = [int(p.parent.name == "PNEUMONIA") for p in paths]
    train, val = patient_split(paths, labels, 0.1, seed)
    side = {i: "val" for i in val} | {i: "train" for i in train}
    sides_by_prefix: dict[str, set[str]] = defaultdict(set)
    sides_by_bytes: dict[str, set[str]] = defaultdict(set)
    for i, path in enumerate(paths):
        sides_by_prefix[_independent_patient(path.stem)].add(side[i])
        sides_by_bytes[hashlib.sha1(path.read_bytes()).hexdigest()].add(side[i])
    assert [p for p, s in sides_by_prefix.items() if len(s) > 1] == []
    assert [h for h, s in sides_by_bytes.items() if len(s) > 1] == []
    # the -0001-0002 names join their patient instead of standing alone
    assert patient_id(SHARED_TRAIN / "NORMAL" / "IM-0429-0001-0002.jpeg") == "im-0429"


def test_earliest_holdout_takes_the_first_patients_of_every_family():
    paths = [f"person{p}_bacteria_{p}.jpeg" for p in range(1, 41)]
    paths += [f"IM-{p:04d}-0001.jpeg" for p in range(100, 120)]
    paths += [f"NORMAL2-IM-{p:04d}-0001.jpeg" for p in range(500, 520)]
    labels = [int(p.startswith("person")) for p in paths]
    train, val = _check_split(paths, labels, 0.2, seed=1, holdout="earliest")
    assert (train, val) == patient_split(paths, labels, 0.2, seed=2, holdout="earliest")  # no chance
    val_names = sorted(paths[i] for i in val)
    assert val_names == sorted(
        [f"person{p}_bacteria_{p}.jpeg" for p in range(1, 9)]
        + [f"IM-{p:04d}-0001.jpeg" for p in range(100, 104)]
        + [f"NORMAL2-IM-{p:04d}-0001.jpeg" for p in range(500, 504)]
    )
