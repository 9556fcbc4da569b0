"""pneumo-eval's report a clinical reader can cite: intervals, the flow of films, the threshold's
origin, errors.csv, model_card.md, the decision curve and a paired comparison; on real films
with the session's trained checkpoint."""

import csv
import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import jinja2
import pytest
import torch
from PIL import Image

from pneumo.cli.tables import print_table
from pneumo.data.split import patient_id
from pneumo.errors import PneumoError
from pneumo.evaluation.model_card import render_model_card
from pneumo.evaluation.report import ReportOptions, evaluate
from pneumo.serving.inference import predict
from pneumo.serving.loading import load_model
from pneumo.training.fit import train
from tests.helpers import FAST, SAMPLE, make_cfg, make_tiny_root, sample_files

AUTHORS = "A. Researcher and B. Researcher"


@pytest.fixture(scope="module")
def report(tmp_path_factory, trained_ckpt):
    """One evaluation of tiny_root's test/ (the 16 bundled films, which trained_ckpt trained and
    validated on) with one unreadable film and one stray file added, Grad-CAM on, and card keys."""
    root = make_tiny_root(tmp_path_factory.mktemp("report") / "xray")
    (root / "test" / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(b"not a jpeg at all")
    (root / "test" / "PNEUMONIA" / "Thumbs.db").write_bytes(b"\0" * 64)
    out = root.parent / "out"
    options = ReportOptions(cam=True, card={"authors": AUTHORS, "notes": ["Trained for a test."]})
    metrics = evaluate(str(trained_ckpt), str(root), "test", out, options=options)
    return {"root": root, "out": out, "metrics": metrics, "ckpt": trained_ckpt}


def test_every_figure_has_its_intervals_beside_the_old_keys(report):
    metrics = report["metrics"]
    saved = json.loads((report["out"] / "metrics.json").read_text())
    for key in ("n", "auroc", "threshold", "acc", "sensitivity", "specificity", "precision", "f1"):
        assert key in saved  # what other code reads stays where it was
    for key in ("confusion_matrix", "at_0.5", "groups", "threshold_spread", "calibration"):
        assert key in saved
    intervals = saved["intervals"]
    assert intervals["level"] == 0.95
    boot = intervals["bootstrap"]
    assert (boot["draws"], boot["seed"], boot["level"]) == (2000, 0, 0.95)
    assert "patients" in boot["method"]
    # 16 readable films of 15 patients: person1946 has two
    assert (boot["patients"], boot["patients_negative"], boot["patients_positive"]) == (15, 8, 7)
    for where, figures in (("at_threshold", saved), ("at_0.5", saved["at_0.5"])):
        block = intervals[where]
        assert set(block["figures"]) == {"acc", "sensitivity", "specificity", "precision", "npv", "f1"}
        for name, row in block["figures"].items():
            assert row["estimate"] == pytest.approx(figures[name], nan_ok=True), (where, name)
            if name == "f1":
                assert row["wilson"] is None
            else:
                assert row["k"] <= row["n"] and len(row["wilson"]) == 2
            assert len(row["bootstrap"]) == 2
    assert "exploratory" in intervals["at_0.5"]["role"]
    tn, fp = saved["confusion_matrix"][0]
    fn, _ = saved["confusion_matrix"][1]
    assert saved["npv"] == pytest.approx(tn / (tn + fn) if tn + fn else math.nan, nan_ok=True)
    assert intervals["auroc"]["estimate"] == pytest.approx(saved["auroc"], abs=1e-6)
    low, high = intervals["auroc"]["bootstrap"]
    assert low <= saved["auroc"] <= high
    for row in saved["groups"].values():
        assert {"sensitivity", "specificity", "auroc", "patients"} <= set(row["intervals"])
    assert metrics["auroc"] == saved["auroc"]


def test_flow_counts_films_and_patients_and_says_what_was_left_out(report):
    flow = report["metrics"]["flow"]
    assert flow["found"] == {"films": 17, "by_class": {"NORMAL": 9, "PNEUMONIA": 8}}
    [stray] = flow["skipped_files"]
    assert stray["path"].endswith("Thumbs.db") and stray["class"] == "PNEUMONIA"
    [unread] = flow["left_out"]
    assert unread["path"].endswith("IM-9999-0001.jpeg") and unread["class"] == "NORMAL" and unread["reason"]
    assert report["metrics"]["unreadable_files"] == [unread["path"]]
    evaluated = flow["evaluated"]
    assert evaluated["films"] == 16 and evaluated["patients"] == 15
    assert evaluated["by_class"] == {
        "NORMAL": {"films": 8, "patients": 8},
        "PNEUMONIA": {"films": 8, "patients": 7},
    }
    # these films trained (12) and validated (4) the checkpoint: both overlaps found and warned of
    training, validation = flow["overlap"]["training"], flow["overlap"]["validation"]
    assert training["checked"] and "fingerprint matches" in training["how"]
    assert training["training_films"] == 12 and training["films"] == 12
    assert validation["checked"] and validation["films"] == 4
    assert training["patients"] + validation["patients"] == 15
    # the same files, so also byte for byte
    assert training["identical_films"] == 12 and validation["identical_films"] == 4
    assert any("training patients" in w for w in flow["warnings"])
    assert any("validation patients" in w for w in flow["warnings"])


def test_threshold_origin_and_decision_curve_are_recorded(report):
    metrics = report["metrics"]
    rule = metrics["threshold_rule"]
    meta = torch.load(report["ckpt"], weights_only=True)["pneumo"]
    assert rule["rule"] == meta["config"]["model"]["threshold_method"] == "youden"
    assert rule["chosen_on"] == "validation" and rule["validation_films"] == 4
    assert rule["value"] == pytest.approx(meta["threshold"]) == pytest.approx(metrics["threshold"])
    assert "exploratory" in rule["at_0.5"]
    curve = metrics["decision_curve"]
    assert "exploratory" in curve["label"] and len(curve["rows"]) == 19
    assert curve["prevalence"] == pytest.approx(0.5)
    assert (report["out"] / "decision_curve.png").stat().st_size > 1000


def test_errors_csv_lists_exactly_the_films_the_confusion_matrix_counts_as_wrong(report):
    metrics = report["metrics"]
    with (report["out"] / "errors.csv").open() as file:
        rows = list(csv.DictReader(file))
    (_, fp), (fn, _) = metrics["confusion_matrix"]
    assert sum(r["error"] == "false positive" for r in rows) == fp
    assert sum(r["error"] == "false negative" for r in rows) == fn
    # recounted from the model's own probabilities of the readable films
    model = load_model(report["ckpt"])
    films = [s for s in sorted((report["root"] / "test").rglob("*.jpeg")) if s.name != "IM-9999-0001.jpeg"]
    predictions = predict(model, films)
    wrong = {
        p.path
        for p in predictions
        if (p.p_positive >= model.threshold) != (Path(p.path).parent.name == "PNEUMONIA")
    }
    assert {r["path"] for r in rows} == wrong
    distances = [float(r["distance"]) for r in rows]
    assert distances == sorted(distances, reverse=True)  # worst first
    for row in rows:
        assert float(row["distance"]) == pytest.approx(abs(float(row["p_positive"]) - model.threshold))
        assert row["patient"] == patient_id(row["path"])
        # cam=true: one Grad-CAM overlay per error
        assert (report["out"] / row["cam"]).stat().st_size > 1000
    assert metrics["errors"]["false_positives"] == fp and metrics["errors"]["false_negatives"] == fn


def test_model_card_renders_with_no_unfilled_placeholder(report):
    card = (report["out"] / "model_card.md").read_text()
    assert not re.search(r"\{\{|\}\}|\{%|%\}|\bNone\b|\bnan\b|Undefined", card)
    for heading in (
        "## Model details",
        "## Intended use",
        "## Out-of-scope use",
        "## Training data",
        "## Evaluation data",
        "## Figures, with 95 % intervals",
        "## Calibration",
        "## Threshold",
        "## Decision curve (exploratory)",
        "## Limitations",
        "## Notes",
    ):
        assert heading in card
    sha = hashlib.sha256(report["ckpt"].read_bytes()).hexdigest()
    assert sha in card and report["metrics"]["checkpoint_sha256"] == sha
    assert AUTHORS in card and "Trained for a test." in card
    assert "Contact: not stated" in card  # left empty: said, not blank
    assert "Guangzhou Women and Children's Medical Center" in card
    assert "not a medical device" in card
    # the interval of the AUROC as metrics.json holds it
    low, high = report["metrics"]["intervals"]["auroc"]["bootstrap"]
    assert f"[{low:.4f}, {high:.4f}]" in card


def test_a_missing_value_stops_the_card_instead_of_leaving_a_blank():
    with pytest.raises(jinja2.UndefinedError):
        render_model_card({"title": "a card with nothing else"})
    with pytest.raises(PneumoError, match="card has no key 'author'"):
        ReportOptions(card={"author": "someone"})
    with pytest.raises(PneumoError, match="intervals.draws=0"):
        ReportOptions(draws=0)


def test_console_shows_intervals_flow_and_threshold_origin(report, capsys):
    print_table(report["metrics"])
    printed = capsys.readouterr().out
    for text in (
        "Wilson",
        "bootstrap",
        "exploratory",
        "npv",
        "of 15 patients",
        "model.threshold_method=youden",
        "17 found",
        "1 left out",
        "warning:",
        "errors.csv",
    ):
        assert text in printed, text


def _films_twice(root: Path, paired: bool) -> Path:
    """test/ with every bundled film twice, plus two normal films' pixels filed (as PNG: other
    bytes, the same pixels) as pneumonia too, so that no model ranks the films perfectly;
    ``paired``: a film's two copies are one child's two films, else each file is a child."""
    units = [("NORMAL", f, False) for f in sample_files("NORMAL")]
    units += [("PNEUMONIA", f, False) for f in sample_files("PNEUMONIA")]
    units += [("PNEUMONIA", f, True) for f in sample_files("NORMAL")[:2]]
    for i, (label, film, as_png) in enumerate(units):
        folder = root / "test" / label
        folder.mkdir(parents=True, exist_ok=True)
        for copy in (0, 1):
            child = i if paired else 2 * i + copy
            name = (
                f"IM-{child:04d}-0001{'-0002' if paired and copy else ''}"
                if label == "NORMAL"
                else f"person{child}_bacteria_{2 * i + copy}"
            )
            if as_png:
                with Image.open(film) as image:
                    image.save(folder / f"{name}.png", compress_level=copy + 1)  # two files, two byte strings
            else:
                shutil.copy(film, folder / f"{name}.jpeg")
    return root


def test_the_bootstrap_resamples_patients_on_real_films(tmp_path, trained_ckpt):
    paired = evaluate(str(trained_ckpt), str(_films_twice(tmp_path / "paired", True)), "test", tmp_path / "a")
    alone = evaluate(str(trained_ckpt), str(_films_twice(tmp_path / "alone", False)), "test", tmp_path / "b")
    assert paired["n"] == alone["n"] == 36
    assert paired["intervals"]["bootstrap"]["patients"] == 18  # two films each
    assert alone["intervals"]["bootstrap"]["patients"] == 36
    assert paired["auroc"] == pytest.approx(alone["auroc"])  # the same films, the same pixels

    def width(metrics):
        low, high = metrics["intervals"]["auroc"]["bootstrap"]
        return high - low

    assert width(paired) > width(alone) > 0


def test_two_models_on_the_same_films(tmp_path, tiny_root, trained_ckpt, capsys):
    twin = tmp_path / "twin.ckpt"
    shutil.copy(trained_ckpt, twin)
    metrics = evaluate(
        str(trained_ckpt),
        str(tiny_root),
        "test",
        tmp_path / "out",
        options=ReportOptions(compare_ckpt_path=str(twin)),
    )
    comparison = json.loads((tmp_path / "out" / "metrics.json").read_text())["comparison"]
    assert comparison["films"] == 16 and comparison["patients"] == 15
    assert comparison["auroc"]["difference"] == 0.0 and comparison["auroc"]["bootstrap"] == [0.0, 0.0]
    for figure in ("sensitivity", "specificity"):
        row = comparison[figure]
        assert row["a"] == row["b"] == pytest.approx(metrics[figure])
        assert (row["a_only"], row["b_only"], row["p_value"]) == (0, 0, 1.0)
    assert comparison["bootstrap"]["draws"] == 2000
    assert "## Comparison with a second model" in (tmp_path / "out" / "model_card.md").read_text()
    print_table(metrics)
    assert "McNemar" in capsys.readouterr().out


def test_a_model_listing_the_classes_in_the_other_order_is_compared(tmp_path, tiny_root, trained_ckpt):
    """The same two classes and positive class in another order: the same task (both models
    are read as P(PNEUMONIA)); another positive class is refused."""
    reordered = tmp_path / "reordered"
    train(
        make_cfg(
            reordered,
            [*FAST, f"data.root={SAMPLE}", "data.classes=[PNEUMONIA,NORMAL]", "trainer.max_epochs=1"],
        )
    )
    options = ReportOptions(compare_ckpt_path=str(reordered / "checkpoints" / "best.ckpt"))
    metrics = evaluate(str(trained_ckpt), str(tiny_root), "test", tmp_path / "out", options=options)
    assert metrics["comparison"]["films"] == 16
    flipped = tmp_path / "flipped"
    train(
        make_cfg(
            flipped, [*FAST, f"data.root={SAMPLE}", "data.positive_class=NORMAL", "trainer.max_epochs=1"]
        )
    )
    options = ReportOptions(compare_ckpt_path=str(flipped / "checkpoints" / "best.ckpt"))
    with pytest.raises(PneumoError, match="positive class 'NORMAL'.*compare models of the same task"):
        evaluate(str(trained_ckpt), str(tiny_root), "test", tmp_path / "out2", options=options)


def test_gradcam_of_the_errors_is_refused_for_an_ensemble(tmp_path, trained_ckpt):
    from pneumo.serving.ensemble import make_ensemble

    members = [tmp_path / "a.ckpt", tmp_path / "b.ckpt"]
    shutil.copy(trained_ckpt, members[0])
    # a second model: the same one with its last layer's bias moved (a plain copy is refused)
    checkpoint = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    for key in [k for k in checkpoint["state_dict"] if k.endswith("fc.bias")]:
        checkpoint["state_dict"][key] = checkpoint["state_dict"][key] + 0.01
    torch.save(checkpoint, members[1])
    make_ensemble(members, tmp_path / "ensemble.ckpt", data_root=SAMPLE)
    with pytest.raises(PneumoError, match=r"ensemble of 2 models.*Grad-CAM \(cam=true\)"):
        evaluate(
            str(tmp_path / "ensemble.ckpt"),
            str(SAMPLE),
            "val",
            tmp_path / "out",
            options=ReportOptions(cam=True),
        )
    assert not (tmp_path / "out" / "metrics.json").exists()  # refused before any film was read


def test_validation_split_is_checked_against_the_rebuilt_training_patients(tmp_path, trained_ckpt):
    metrics = evaluate(str(trained_ckpt), str(SAMPLE), "val", tmp_path)
    overlap = metrics["flow"]["overlap"]
    # the patient split keeps every child on one side
    assert overlap["training"]["checked"] and overlap["training"]["patients"] == 0
    assert not overlap["validation"]["checked"]  # these are the validation films
    assert metrics["flow"]["warnings"] == []
    assert metrics["flow"]["source"] == "the 4 validation files recorded in the checkpoint"


def test_a_training_film_renamed_into_test_is_found_by_its_bytes(tmp_path, trained_ckpt):
    """Names that hide the patient (no Kermany pattern: each its own patient) cannot hide the film."""
    root = make_tiny_root(tmp_path / "xray")
    for film in sorted((root / "test").rglob("*.jpeg")):
        film.rename(film.with_name(f"copy{film.name.replace('-', '').replace('_', '')}"))
    metrics = evaluate(str(trained_ckpt), str(root), "test", tmp_path / "out")
    overlap = metrics["flow"]["overlap"]
    assert overlap["training"]["patients"] == 0 and overlap["validation"]["patients"] == 0
    assert overlap["training"]["identical_films"] == 12 and overlap["validation"]["identical_films"] == 4
    [example, *_] = overlap["training"]["identical_examples"]
    assert "/test/" in example and " = " in example
    warned = [w for w in metrics["flow"]["warnings"] if "byte-identical" in w]
    assert len(warned) == 2 and "training films" in warned[0] and "validation films" in warned[1]
