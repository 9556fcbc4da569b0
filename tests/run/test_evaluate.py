import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from pneumo.cli.tables import print_table
from pneumo.data.dataset import list_films
from pneumo.evaluation.report import evaluate
from pneumo.model.metrics import evaluation_metrics
from pneumo.serving.inference import predict
from pneumo.serving.loading import load_model
from tests.helpers import SAMPLE, run_cli, sample_files

PROBS = torch.tensor([0.05, 0.10, 0.20, 0.30, 0.60, 0.40, 0.55, 0.70, 0.80, 0.90, 0.45, 0.35])
TARGETS = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 1])


def test_metrics_agree_with_scikit_learn():
    metrics = evaluation_metrics(PROBS, TARGETS, threshold=0.42)
    predicted = (PROBS >= 0.42).long()
    assert metrics["confusion_matrix"] == confusion_matrix(TARGETS, predicted).tolist()
    # hand count at 0.42: NORMAL 0.45 and 0.60 called pneumonia; PNEUMONIA 0.40 and 0.35 missed
    assert metrics["confusion_matrix"] == [[4, 2], [2, 4]]
    assert metrics["sensitivity"] == pytest.approx(4 / 6)
    assert metrics["specificity"] == pytest.approx(4 / 6)
    assert metrics["f1"] == pytest.approx(f1_score(TARGETS, predicted))
    assert metrics["auroc"] == pytest.approx(roc_auc_score(TARGETS, PROBS))
    assert metrics["at_0.5"]["confusion_matrix"] == confusion_matrix(TARGETS, PROBS >= 0.5).tolist()
    assert metrics["n"] == 12 and metrics["n_negative"] == 6


def test_eval_writes_metrics_and_pictures(tmp_path, tiny_root, trained_ckpt):
    metrics = evaluate(str(trained_ckpt), str(tiny_root), "test", tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["n"] == 16 and saved["split"] == "test"
    for key in ("acc", "auroc", "sensitivity", "specificity", "f1", "threshold", "confusion_matrix"):
        assert key in saved
    assert sum(map(sum, saved["confusion_matrix"])) == 16
    assert saved["threshold"] == pytest.approx(
        torch.load(trained_ckpt, weights_only=True)["pneumo"]["threshold"]
    )
    assert saved["checkpoint"] == str(trained_ckpt.resolve())
    assert metrics["auroc"] == saved["auroc"]
    for name in ("confusion_matrix.png", "roc.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert list((tmp_path / "tensorboard").glob("events.*"))


def test_eval_on_the_validation_split_uses_the_runs_validation_files(tmp_path, trained_ckpt):
    from pneumo.data.datamodule import XrayDataModule
    from pneumo.evaluation.report import films_of_split

    # trained_ckpt was trained on data/sample with val_fraction 0.25 (and the default seed)
    validated = XrayDataModule(str(SAMPLE), val_fraction=0.25).split_samples()[1]
    expected = sorted(str(s.path) for s in validated)
    recorded = torch.load(trained_ckpt, weights_only=True)["pneumo"]["val_files"]
    assert sorted(str(SAMPLE / path) for path, _ in recorded) == expected
    assert sorted(str(s.path) for s in films_of_split(load_model(trained_ckpt), SAMPLE, "val")) == expected
    metrics = evaluate(str(trained_ckpt), str(SAMPLE), "val", tmp_path)
    assert metrics["n"] == len(expected) == 4 and metrics["n_negative"] == 2


@pytest.mark.slow
def test_eval_command_line(tmp_path, tiny_root, trained_ckpt):
    result = run_cli(
        "-m",
        "pneumo.cli.evaluate",
        f"ckpt_path={trained_ckpt}",
        f"data.root={tiny_root}",
        f"hydra.run.dir={tmp_path}",
        "tta=true",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["tta"] is True and metrics["split"] == "test" and metrics["n"] == 16
    # the same films through the library, with the same views: AUROC by scikit-learn, the
    # sensitivity and specificity counted at the stored threshold
    model = load_model(trained_ckpt)
    rows = predict(model, list_films([tiny_root / "test"]).files, tta=True)
    sick = np.array([Path(r.path).parent.name == "PNEUMONIA" for r in rows])
    p = np.array([r.p_positive for r in rows])
    assert metrics["auroc"] == pytest.approx(roc_auc_score(sick, p), abs=1e-6)
    assert metrics["threshold"] == pytest.approx(model.threshold)
    assert metrics["sensitivity"] == pytest.approx(np.mean(p[sick] >= model.threshold), abs=1e-6)
    assert metrics["specificity"] == pytest.approx(np.mean(p[~sick] < model.threshold), abs=1e-6)
    printed = " ".join(result.stdout.split())  # the table as printed, whatever its wrapping
    assert f"AUROC {metrics['auroc']:.4f}" in printed and "sensitivity" in printed


def test_eval_missing_split_is_named(tmp_path, trained_ckpt):
    from pneumo.errors import PneumoError

    with pytest.raises(PneumoError, match="split folder not found"):
        evaluate(str(trained_ckpt), str(tmp_path), "test", tmp_path / "out")


@pytest.mark.parametrize(
    "name, group",
    [
        ("IM-0115-0001.jpeg", "IM-"),
        ("IM-0429-0001-0002.jpeg", "IM-"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-"),
        ("train/NORMAL/NORMAL2-IM-0587-0001-0001.jpeg", "NORMAL2-IM-"),
        ("person1000_bacteria_2931.jpeg", "person bacteria"),
        ("person123_virus_7_2.jpeg", "person virus"),
        ("person5_fungus_1.jpeg", None),
        ("CXR-IM-0001-0001.png", None),
        ("scan_0042.png", None),
        ("labels.csv", None),
    ],
)
def test_acquisition_group_is_read_from_the_file_name(name, group):
    from pneumo.data.split import acquisition_group

    assert acquisition_group(name) == group


def test_eval_gives_figures_per_acquisition_group(tmp_path, trained_ckpt, capsys):
    # The bundled films renamed into the four families; one pneumonia film named like an IM-
    # film, so one group holds both classes; one film whose name is of no family.
    named = {
        "NORMAL": [(f"IM-000{i}-0001.jpeg", "IM-") for i in range(3)]
        + [(f"NORMAL2-IM-000{i}-0001.jpeg", "NORMAL2-IM-") for i in range(4)]
        + [("scan.jpeg", None)],
        "PNEUMONIA": [(f"person{i}_bacteria_{i}.jpeg", "person bacteria") for i in range(4)]
        + [(f"person{i}_virus_{i}.jpeg", "person virus") for i in range(3)]
        + [("IM-0099-0001.jpeg", "IM-")],
    }
    root = tmp_path / "xray"
    group_of, positive = {}, {}
    for label, films in named.items():
        (root / "test" / label).mkdir(parents=True)
        for film, (name, group) in zip(sample_files(label), films):
            path = shutil.copy(film, root / "test" / label / name)
            group_of[str(path)], positive[str(path)] = group, label == "PNEUMONIA"

    print_table(evaluate(str(trained_ckpt), str(root), "test", tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())["groups"]
    counts = {group: (row["n"], row["n_negative"], row["n_positive"]) for group, row in saved.items()}
    assert counts == {
        "IM-": (4, 3, 1),
        "NORMAL2-IM-": (4, 4, 0),
        "person bacteria": (4, 0, 4),
        "person virus": (3, 0, 3),
    }

    # recount every group from the model's own per-file probabilities
    model = load_model(trained_ckpt)
    rows = predict(model, [Path(path) for path in group_of])
    for group, row in saved.items():
        members = [r for r in rows if group_of[r.path] == group]
        truth = [positive[r.path] for r in members]
        called = [r.p_positive >= model.threshold for r in members]
        fp = sum(c and not t for c, t in zip(called, truth))
        fn = sum(t and not c for c, t in zip(called, truth))
        assert (row["false_positives"], row["false_negatives"]) == (fp, fn)
        negatives, positives = truth.count(False), truth.count(True)
        assert row["specificity"] == pytest.approx(
            (negatives - fp) / negatives if negatives else math.nan, nan_ok=True
        )
        assert row["sensitivity"] == pytest.approx(
            (positives - fn) / positives if positives else math.nan, nan_ok=True
        )
        expected_auroc = roc_auc_score(truth, [r.p_positive for r in members]) if group == "IM-" else math.nan
        assert row["auroc"] == pytest.approx(expected_auroc, nan_ok=True)
    printed = capsys.readouterr().out
    assert "by acquisition group" in printed and "person virus" in printed
