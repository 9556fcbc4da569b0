"""k-fold cross-validation by patient: the folds, the fold a run validates on, the checks."""

from collections import Counter, defaultdict
from dataclasses import replace

import pytest

from pneumo.artifacts.checkpoint import CheckpointMeta
from pneumo.data.datamodule import XrayDataModule
from pneumo.data.preprocess import preprocessing_spec
from pneumo.data.provenance import check_resume, fold_differences
from pneumo.data.split import patient_folds, patient_id
from pneumo.errors import PneumoError
from pneumo.training.settings import check_folds
from tests.helpers import SAMPLE, SHARED_TRAIN, needs_shared


def _kermany_like(patients_per_class: int = 40):
    """Paths of two classes, some patients with several films."""
    paths, labels = [], []
    for number in range(patients_per_class):
        for film in range(1 + number % 3):
            paths.append(f"NORMAL/IM-{number:04d}-000{film + 1}.jpeg")
            labels.append(0)
        for film in range(1 + number % 2):
            paths.append(f"PNEUMONIA/person{number}_bacteria_{number * 10 + film}.jpeg")
            labels.append(1)
    return paths, labels


def _check_folds(paths, labels, folds, seed):
    assigned = patient_folds(paths, labels, folds, seed)
    assert len(assigned) == len(paths) and set(assigned) == set(range(folds))  # every film once
    where = defaultdict(set)
    for path, fold in zip(paths, assigned):
        where[patient_id(path)].add(fold)
    assert all(len(f) == 1 for f in where.values())  # each patient in one fold
    largest = max(Counter(patient_id(p) for p in paths).values())
    for label in set(labels):  # stratified: each class spread evenly, to within one patient's films
        sizes = Counter(f for f, y in zip(assigned, labels) if y == label)
        assert max(sizes.values()) - min(sizes.values()) <= largest
    return assigned


def test_folds_are_patient_disjoint_stratified_and_cover_every_film_once():
    paths, labels = _kermany_like()
    first = _check_folds(paths, labels, 5, seed=42)
    assert patient_folds(paths, labels, 5, seed=42) == first  # the same for every fold index
    assert _check_folds(paths, labels, 5, seed=1) != first  # seeded by data.seed


@needs_shared
def test_folds_of_the_kaggle_train_split():
    paths = sorted(p for p in SHARED_TRAIN.rglob("*.jpeg"))
    labels = [int(p.parent.name == "PNEUMONIA") for p in paths]
    assigned = _check_folds([p.name for p in paths], labels, 5, seed=42)
    assert min(Counter(assigned).values()) > 1000


def test_a_fold_validates_and_the_others_train():
    folds = [XrayDataModule(str(SAMPLE), folds=3, fold=i, seed=7).split_samples() for i in range(3)]
    everything = sorted(str(s.path) for s in folds[0][0] + folds[0][1])
    validated = [str(s.path) for _, val in folds for s in val]
    assert sorted(validated) == everything  # every film validates in exactly one fold
    for train, val in folds:
        assert {patient_id(s.path) for s in train}.isdisjoint({patient_id(s.path) for s in val})
        assert {s.label for s in val} == {0, 1}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"folds": 5}, "data.folds is set but data.fold is not"),
        ({"fold": 1}, "data.fold is set but data.folds is not"),
        ({"folds": 1, "fold": 0}, "data.folds=1 is not valid"),
        ({"folds": 5, "fold": 5}, "data.fold=5 is not valid: use a fold number from 0 to 4"),
        ({"folds": "five", "fold": 0}, "data.folds=five is not valid"),
    ],
)
def test_fold_settings_are_checked(data, message):
    with pytest.raises(PneumoError, match=message):
        check_folds(data)
    check_folds({"folds": 5, "fold": 4})
    check_folds({"folds": None, "fold": None})


def _meta(**data) -> CheckpointMeta:
    config = {"seed": 1, "data": {"seed": 42, **data}, "paths": {"output_dir": "/runs/a"}}
    return CheckpointMeta(
        ["NORMAL", "PNEUMONIA"], "PNEUMONIA", preprocessing_spec(32), val_files=[], config=config
    )


def test_a_resume_whose_folds_changed_is_refused():
    saved = _meta(folds=5, fold=2)
    check_resume(saved, _meta(folds=5, fold=2), "last.ckpt")
    for changed, key in ((_meta(folds=5, fold=3), "data.fold"), (_meta(folds=None, fold=None), "data.folds")):
        with pytest.raises(PneumoError, match=f"resuming last.ckpt with {key}=.*cross-validation fold"):
            check_resume(saved, changed, "last.ckpt")
    with pytest.raises(PneumoError, match="data.seed=7, but it was trained with data.seed=42"):
        check_resume(saved, _meta(folds=5, fold=2, seed=7), "last.ckpt")


def test_folds_may_differ_in_the_fold_and_their_own_folders_only():
    a = {"data": {"fold": 0, "folds": 3, "root": "x"}, "paths": {"output_dir": "/s/0"}, "cb": "/s/0/ck"}
    b = {"data": {"fold": 1, "folds": 3, "root": "y"}, "paths": {"output_dir": "/s/1"}, "cb": "/s/1/ck"}
    assert fold_differences(a, b) == []
    c = replace(_meta(), config={**b, "model": {"lr": 0.1}}).config
    assert fold_differences(a, c) == [("model.lr", "null", 0.1)]
