from collections import Counter

import pytest

from pneumo.data.split import patient_id, patient_split
from tests.conftest import SHARED_TRAIN, needs_shared


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("IM-0115-0001.jpeg", "im-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "normal2-im-1427"),
        ("NORMAL2-IM-1427-0002.jpeg", "normal2-im-1427"),
        ("scan.png", "scan"),
    ],
)
def test_patient_id_from_kermany_names(name, patient):
    assert patient_id(name) == patient


def _check_split(paths, labels, val_fraction, seed):
    train, val = patient_split(paths, labels, val_fraction, seed)
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
