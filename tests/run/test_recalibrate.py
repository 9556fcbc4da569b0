"""pneumo-recalibrate: a checkpoint's temperature and threshold fitted again on a site's films."""

import hashlib
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from pneumo.cli.recalibrate import main
from pneumo.data.split import patient_id
from pneumo.errors import PneumoError
from pneumo.evaluation.recalibrate import MIN_PATIENTS_PER_CLASS, recalibrate
from pneumo.evaluation.report import evaluate
from pneumo.serving.loading import load_model
from pneumo.serving.margins import film_margins
from pneumo.training.fit import train
from tests.helpers import FAST, SAMPLE, SHARED_TRAIN, make_cfg, needs_shared, sample_files


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run on the bundled films: its best.ckpt."""
    run = tmp_path_factory.mktemp("run")
    train(make_cfg(run, [*FAST, f"data.root={SAMPLE}", "trainer.max_epochs=1"]))
    return run / "checkpoints" / "best.ckpt"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_sample_of_too_few_patients_is_refused_in_one_line(checkpoint, tmp_path, capsys):
    refused = f"8 NORMAL and 7 PNEUMONIA patients: .* at least {MIN_PATIENTS_PER_CLASS}"
    with pytest.raises(PneumoError, match=refused):
        recalibrate(checkpoint, SAMPLE, tmp_path / "site.ckpt")
    with pytest.raises(SystemExit) as stop:
        main(["--ckpt", str(checkpoint), "--data", str(SAMPLE), "--out", str(tmp_path / "site.ckpt")])
    assert stop.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("error: ") and "0.2 either side" in line
    assert not (tmp_path / "site.ckpt").exists()


def _site(root: Path, brightness: float, contrast: float, patients: int = 25) -> Path:
    """``root/site/CLASS/*``: one film of each of ``patients`` patients a class from the Kaggle
    train split, its brightness and contrast changed as another machine's might be."""
    for name in ("NORMAL", "PNEUMONIA"):
        chosen: dict[str, Path] = {}
        for path in sorted((SHARED_TRAIN / name).glob("*.jpeg")):
            chosen.setdefault(patient_id(path), path)
            if len(chosen) == patients:
                break
        (root / "site" / name).mkdir(parents=True)
        for path in chosen.values():
            image = Image.open(path).convert("L")
            image = ImageEnhance.Brightness(image).enhance(brightness)
            image = ImageEnhance.Contrast(image).enhance(contrast)
            image.save(root / "site" / name / path.name)
    return root / "site"


@needs_shared
def test_recalibration_on_shifted_films_moves_the_threshold_and_records_it(checkpoint, tmp_path, capsys):
    original = _sha(checkpoint)
    plain = recalibrate(checkpoint, _site(tmp_path / "plain", 1.0, 1.0), tmp_path / "plain.ckpt")
    site = _site(tmp_path / "shifted", 0.6, 1.6)
    main(["--ckpt", str(checkpoint), "--data", str(site), "--out", str(tmp_path / "site.ckpt")])
    assert "50 films of 25 NORMAL, 25 PNEUMONIA patients" in capsys.readouterr().out
    assert _sha(checkpoint) == original  # the original untouched

    recalibrated = load_model(tmp_path / "site.ckpt")
    record = recalibrated.meta.calibration["recalibration"]
    assert record["site"] == str(site.resolve()) and record["source"] == str(checkpoint)
    assert record["patients_by_class"] == {"NORMAL": 25, "PNEUMONIA": 25}
    assert record["rule"]["threshold_method"] == "youden"
    assert recalibrated.threshold == record["threshold"]["after"] != load_model(checkpoint).threshold
    assert recalibrated.meta.calibration["fitted_on"] == "site"
    # the shift moved the operating point: the same films unshifted give another one
    assert record["threshold"]["after"] != plain["threshold"]["after"]
    for figure in ("sensitivity", "specificity"):
        point = record["after"][figure]
        assert point["n"] == 25 and point["wilson"][0] <= point["estimate"] <= point["wilson"][1]

    # its model card says so
    evaluate(str(tmp_path / "site.ckpt"), str(site.parent), "site", tmp_path / "eval")
    card = (tmp_path / "eval" / "model_card.md").read_text()
    assert "**Recalibrated**" in card and "fitted on a site's own films (pneumo-recalibrate)" in card


def _tiny_site(root: Path, patients: int = MIN_PATIENTS_PER_CLASS) -> Path:
    """``root/site/CLASS/*``: one film for each of ``patients`` patients a class, made from the
    bundled films, each a little brighter than the last so that no two share their bytes."""
    names = {"NORMAL": "IM-{:04d}-0001.jpeg", "PNEUMONIA": "person{:d}_bacteria_1.jpeg"}
    for label, name in names.items():
        (root / "site" / label).mkdir(parents=True)
        films = sample_files(label)
        for i in range(patients):
            image = Image.open(films[i % len(films)]).convert("L").resize((64, 64))
            image = ImageEnhance.Brightness(image).enhance(1 + 0.01 * i)
            image.save(root / "site" / label / name.format(100 + i))
    return root / "site"


def test_a_recalibrated_checkpoint_scored_on_its_own_site_films_is_flagged_in_sample(checkpoint, tmp_path):
    site = _tiny_site(tmp_path)
    record = recalibrate(checkpoint, site, tmp_path / "site.ckpt")
    assert len(record["films_sha256"]) == 2 * MIN_PATIENTS_PER_CLASS
    recalibrated = load_model(tmp_path / "site.ckpt")
    assert recalibrated.meta.trackers is None

    metrics = evaluate(str(tmp_path / "site.ckpt"), str(tmp_path), "site", tmp_path / "own")
    assert metrics["flow"]["overlap"]["recalibration"]["films"] == 2 * MIN_PATIENTS_PER_CLASS
    assert any("in-sample" in line for line in metrics["flow"]["warnings"])
    origin = metrics["threshold_rule"]
    assert origin["chosen_on"] == "site" and str(site.resolve()) in origin["where"]
    card = (tmp_path / "own" / "model_card.md").read_text()
    assert "refitted on a site's films" in card and "Validation films (threshold" not in card

    # other films of the same source are not flagged
    other = evaluate(str(tmp_path / "site.ckpt"), str(SAMPLE.parent), "sample", tmp_path / "other")
    assert other["flow"]["overlap"]["recalibration"]["films"] == 0
    assert not any("in-sample" in line for line in other["flow"]["warnings"])


def test_a_temperature_the_site_cannot_fit_keeps_the_source_one_and_says_so(checkpoint, tmp_path):
    # the site's labels follow the network's own scores: the classes do not overlap, so no
    # temperature can be fitted on them
    pool = _tiny_site(tmp_path / "pool")
    films = sorted(pool.glob("*/*.jpeg"))
    source = load_model(checkpoint)
    order = film_margins(source, films).argsort().tolist()
    for rank, index in enumerate(order):
        label = "NORMAL" if rank < len(films) // 2 else "PNEUMONIA"
        (tmp_path / "site" / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(films[index], tmp_path / "site" / label / f"person{rank}_bacteria_1.jpeg")
    record = recalibrate(checkpoint, tmp_path / "site", tmp_path / "site.ckpt")
    assert record["temperature"]["fit"].startswith("not refitted: ")
    assert record["temperature"]["after"] == source.meta.temperature
    assert load_model(tmp_path / "site.ckpt").meta.temperature == source.meta.temperature
