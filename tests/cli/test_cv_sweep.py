"""cv=5fold: the folds as one sweep, out-of-fold scores, the fold ensemble, fold-by-fold resumes."""

import csv
import json

import pytest
import torch
from omegaconf import OmegaConf

from pneumo.errors import PneumoError
from pneumo.evaluation.cv import fold_models
from pneumo.model.network import Ensemble
from pneumo.serving.ensemble import BEST
from pneumo.serving.inference import predict
from pneumo.serving.loading import load_model
from pneumo.serving.margins import film_margins
from pneumo.training.cv_sweep import CrossValidationSweep, finished_fold, print_cv
from tests.helpers import FAST, SAMPLE, make_cfg, run_cli

# three folds of the 16 bundled films (8 normal patients, 7 with pneumonia), one epoch each
TINY = [
    "pneumo.cli.train",
    "-m",
    "cv=5fold",
    "data.folds=3",
    "data.fold=range(3)",
    *FAST,
    f"data.root={SAMPLE}",
    "trainer.max_epochs=1",
]
PLANTED = "PNEUMONIA/person1946_bacteria_4874.jpeg"


def _oof(sweep) -> list[dict[str, str]]:
    with (sweep / "oof.csv").open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_a_cv_sweep_scores_every_film_out_of_fold_and_resumes_fold_by_fold(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cross-validation: 16 films of 15 patients in 3 folds" in result.stdout

    # every film once, by the fold that validated on it
    rows = _oof(sweep)
    films = sorted(p.relative_to(SAMPLE).as_posix() for p in SAMPLE.glob("*/*.jpeg"))
    assert sorted(r["path"] for r in rows) == films
    models = fold_models(sweep)
    (planted,) = [r for r in rows if r["path"] == PLANTED]
    fold = int(planted["fold"])
    logits = [float(film_margins(m, [SAMPLE / PLANTED])[0]) for m in models]
    assert [PLANTED in dict(m.meta.val_files) for m in models] == [i == fold for i in range(3)]
    assert float(planted["logit"]) == pytest.approx(logits[fold], abs=1e-5)
    # the other folds trained on it, and score it otherwise
    assert all(abs(logits[i] - logits[fold]) > 1e-4 for i in range(3) if i != fold)

    # cv.ckpt: the folds' mean probability, at the out-of-fold temperature and threshold
    figures = json.loads((sweep / "cv.json").read_text())
    assert figures["films"] == 16 and len(figures["by_fold"]["auroc"]["folds"]) == 3
    cv = load_model(sweep / "cv.ckpt")
    assert isinstance(cv.net, Ensemble) and len(cv.net.members) == 3
    assert cv.threshold == figures["threshold"] and cv.meta.temperature == figures["temperature"]
    files = [SAMPLE / f for f in films]
    mean = torch.stack([torch.sigmoid(film_margins(m, files).double()) for m in models]).mean(dim=0)
    expected = torch.sigmoid(torch.logit(mean) / figures["temperature"])
    served = torch.tensor([r.p_positive for r in predict(cv, files)], dtype=torch.float64)
    assert torch.allclose(served, expected, atol=1e-5)

    # launched again: the finished folds are not trained again, the figures are the same
    trained = {p: p.stat().st_mtime_ns for p in sweep.glob(f"*/{BEST}")}
    again = run_cli("-m", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("finished in an earlier launch") == 3
    assert {p: p.stat().st_mtime_ns for p in sweep.glob(f"*/{BEST}")} == trained
    assert _oof(sweep) == rows

    # a fold stopped before it finished resumes from its own last checkpoint
    (sweep / "fold_1" / "fold_finished.json").unlink()
    resumed = run_cli("-m", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "fold 1 was stopped in an earlier launch: resuming" in resumed.stdout + resumed.stderr
    assert (sweep / "fold_1" / "fold_finished.json").is_file()

    # the sweep cannot go on with other folds: another data.seed deals other films (the check a
    # relaunch makes of each finished fold, here on fold 0 as composed by the command)
    fold_0 = [o for o in TINY[2:] if not o.startswith("data.fold=")] + ["data.fold=0", "data.seed=3"]
    with pytest.raises(PneumoError, match="trained with data.seed=42, but this launch has data.seed=3"):
        finished_fold(make_cfg(sweep / "fold_0", fold_0))


def _sweep_config(task: list[str], params: dict[str, str], folds: int):
    return OmegaConf.create(
        {"hydra": {"overrides": {"task": task}, "sweeper": {"params": params}}, "data": {"folds": folds}}
    )


@pytest.mark.parametrize(
    ("task", "params", "folds"),
    [
        (["data.folds=3"], {"data.fold": "range(5)"}, 3),  # the preset's five folds, three dealt
        (["data.fold=range(2)"], {"data.fold": "range(5)"}, 5),  # two of five
        (["data.fold=0,0,1,2,3"], {}, 5),  # a fold twice, one missing
    ],
)
def test_a_sweep_whose_folds_are_not_every_fold_once_is_refused(task, params, folds, capsys):
    with pytest.raises(SystemExit) as stop:
        CrossValidationSweep().on_multirun_start(_sweep_config(task, params, folds))
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"data.folds={folds} sweeps data.fold over" in line and f"data.fold=range({folds})" in line


def test_a_sweep_of_every_fold_once_starts():
    CrossValidationSweep().on_multirun_start(_sweep_config(["data.folds=3", "data.fold=range(3)"], {}, 3))
    CrossValidationSweep().on_multirun_start(_sweep_config([], {"data.fold": "range(5)"}, 5))


def test_the_printed_table_quotes_the_interval_the_rule_names(tmp_path, capsys):
    spread = {"mean": 0.9, "sd": 0.01, "folds": [0.9, 0.9]}
    figure = {"estimate": 1.0, "bootstrap": [1.0, 1.0], "wilson": [0.8389, 1.0], "quote": "wilson"}
    figures = {
        "films": 40,
        "patients": 20,
        "folds": 2,
        "threshold": 0.5,
        "temperature": 1.0,
        "threshold_logit": 0.0,
        "by_fold": {k: spread for k in ("auroc", "sensitivity", "specificity")},
        "fold_thresholds": {"logit": spread},
        "pooled": {
            "auroc": {"estimate": 0.95, "bootstrap": [0.9, 0.99]},
            "sensitivity": figure,
            "specificity": {**figure, "quote": "bootstrap", "bootstrap": [0.7, 0.95]},
        },
    }
    print_cv(figures, tmp_path)
    out = capsys.readouterr().out
    assert "1.0000 [0.8389, 1.0000] Wilson" in out and "[1.0000, 1.0000]" not in out
    assert "1.0000 [0.7000, 0.9500] boot." in out
    assert "not a held-out estimate" in out
