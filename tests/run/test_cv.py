"""The end of a cross-validation (evaluation.cv) on a manifest run: patients from the manifest,
fold consistency by fingerprint, and what pneumo-eval says about cv.ckpt and the fold runs."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from pneumo.errors import PneumoError
from pneumo.evaluation.cv import cross_validate, fold_models, out_of_fold
from pneumo.evaluation.report import evaluate
from pneumo.serving.loading import load_model
from pneumo.training.cv_sweep import FINISHED, finished_fold
from pneumo.training.fit import train
from tests.helpers import FAST, make_cfg, make_tiny_root


def _manifest(root: Path, name: str, skip: int = 0) -> Path:
    """A manifest of root/train/: two films a patient, named in its patient column (the file
    names would make each film its own patient); the first ``skip`` rows left out."""
    rows = []
    for label in ("NORMAL", "PNEUMONIA"):
        for i, path in enumerate(sorted((root / "train" / label).glob("*.jpeg"))):
            rows.append([path.relative_to(root).as_posix(), label, f"{label}-{i // 2}"])
    file = root / name
    with file.open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label", "patient"], *rows[skip:]])
    return file


def _overrides(manifest: Path, fold: int) -> list[str]:
    return [
        *FAST,
        f"data.manifest.file={manifest}",
        "data.folds=2",
        f"data.fold={fold}",
        "trainer.max_epochs=1",
    ]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two folds of the 16 bundled films (8 patients by the manifest), and their cross-validation."""
    base = tmp_path_factory.mktemp("cv")
    root = make_tiny_root(base / "data")
    manifest = _manifest(root, "films.csv")
    for fold in range(2):
        train(make_cfg(base / "sweep" / f"fold_{fold}", _overrides(manifest, fold)))
    cross_validate(base / "sweep")
    return base / "sweep"


def test_out_of_fold_patients_come_from_the_manifest_and_the_folds_match_by_fingerprint(sweep):
    with (sweep / "oof.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16 and {r["patient"] for r in rows} == {
        f"{c}-{i}" for c in ("NORMAL", "PNEUMONIA") for i in range(4)
    }
    assert json.loads((sweep / "cv.json").read_text())["patients"] == 8

    # a fold that trained on other films than the other folds validate on is refused
    models = fold_models(sweep)
    counted = dict(models[0].meta.train_files, sha256="0" * 64)
    changed = replace(models[0], meta=replace(models[0].meta, train_files=counted))
    with pytest.raises(PneumoError, match="fold_0.*the folds do not cover the same films"):
        out_of_fold([changed, models[1]])


def test_pneumo_eval_checks_training_overlap_for_a_fold_and_for_cv_ckpt(sweep, tmp_path):
    root = sweep.parent / "data"
    fold = evaluate(str(sweep / "fold_0" / "checkpoints" / "best.ckpt"), str(root), "test", tmp_path / "fold")
    training = fold["flow"]["overlap"]["training"]
    assert training["checked"] and training["training_films"] == 16 - len(
        load_model(sweep / "fold_0" / "checkpoints" / "best.ckpt").meta.val_files
    )
    assert any("training patients" in line for line in fold["flow"]["warnings"])

    cv = load_model(sweep / "cv.ckpt")
    assert cv.meta.config["data"]["fold"] is None and cv.meta.config["data"]["folds"] == 2
    metrics = evaluate(str(sweep / "cv.ckpt"), str(root), "test", tmp_path / "cv")
    assert metrics["flow"]["overlap"]["training"]["checked"]
    assert metrics["flow"]["overlap"]["training"]["training_films"] == 16
    assert metrics["threshold_rule"]["chosen_on"] == "out-of-fold"
    assert "Validation films: none" in (tmp_path / "cv" / "model_card.md").read_text()
    with pytest.raises(PneumoError, match="no validation films.*oof.csv"):
        evaluate(str(sweep / "cv.ckpt"), str(root), "val", tmp_path / "val")


def test_a_finished_fold_whose_films_changed_is_refused(sweep):
    run = sweep / "fold_1"
    (run / FINISHED).write_text(json.dumps({"fold": 1}) + "\n")
    root = sweep.parent / "data"
    assert finished_fold(make_cfg(run, _overrides(root / "films.csv", 1))) == {"fold": 1}
    fewer = _manifest(root, "fewer.csv", skip=2)  # one patient's films gone
    with pytest.raises(PneumoError, match="fold 1 trained on .* films, but this launch lists another"):
        finished_fold(make_cfg(run, _overrides(fewer, 1)))
