"""An ablation sweep as a user runs it, summarised from its TensorBoard files; runs logged to CSV alone."""

import json
import shutil

import pytest
from omegaconf import OmegaConf

from pneumo.training.fit import train
from tests.helpers import FAST, REPO, SAMPLE, make_cfg, run_cli

# NAME, and a recipe's own as RECIPE/NAME (conf/ablation/kermany_cpu/no_ema.yaml: kermany_cpu/no_ema)
ABLATIONS = sorted(
    p.relative_to(REPO / "conf" / "ablation").with_suffix("").as_posix()
    for p in (REPO / "conf" / "ablation").rglob("*.yaml")
)
# kermany_cpu already averages its weights: ema is the ablation for the other experiments
EXPERIMENT = {"ema": "quickstart"}


@pytest.mark.parametrize("ablation", [a for a in ABLATIONS if a != "recipe"])
def test_each_ablation_changes_the_experiment(tmp_path, ablation):
    experiment = f"experiment={EXPERIMENT.get(ablation, 'kermany_cpu')}"
    recipe = OmegaConf.to_container(make_cfg(tmp_path, [experiment, "ablation=recipe"]))
    changed = OmegaConf.to_container(make_cfg(tmp_path, [experiment, f"ablation={ablation}"]))
    for cfg in (recipe, changed):
        cfg.pop("paths")  # the run directory
    assert changed != recipe


@pytest.mark.slow
def test_ablation_sweep_is_summarised_one_row_a_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "pneumo.cli.train",
        "-m",
        "experiment=kermany_cpu",
        "ablation=recipe,no_smoothing,no_augment,kermany_cpu/no_ema",
        *FAST,
        f"data.root={SAMPLE}",
        "data.val_fraction=0.5",  # the earliest patients: two of each class on the 16 films
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-2000:]

    table = run_cli(str(REPO / "scripts" / "compare_runs.py"), str(sweep))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("all runs: ") and "experiment=kermany_cpu" in lines[0]
    assert "ablation" not in lines[0]
    rows = [line.split(" | ")[0].removeprefix("| ") for line in lines if line.startswith("| ablation=")]
    # a recipe's own ablation is a folder below its job's (Hydra keeps the / of the override)
    assert rows == [
        "ablation=recipe",
        "ablation=no_smoothing",
        "ablation=no_augment",
        "ablation=kermany_cpu/no_ema",
    ]

    as_json = run_cli(str(REPO / "scripts" / "compare_runs.py"), str(sweep), "--json")
    for line in as_json.stdout.splitlines():
        row = json.loads(line)
        assert row["epochs"] == 2
        assert 0.0 <= row["val/auroc"] <= row["best val/auroc"] <= 1.0
        assert row["time/train_epoch_s"] > 0


@pytest.mark.slow
def test_a_folder_without_runs_is_named(tmp_path):
    result = run_cli(str(REPO / "scripts" / "compare_runs.py"), str(tmp_path))
    assert result.returncode == 2 and str(tmp_path) in result.stderr


@pytest.mark.slow
def test_evaluation_folders_are_not_runs(tmp_path, trained_ckpt):
    from pneumo.evaluation.report import evaluate

    evaluate(str(trained_ckpt), str(REPO / "data"), "sample", tmp_path / "eval")
    assert list((tmp_path / "eval" / "tensorboard").glob("events.out.tfevents.*"))
    result = run_cli(str(REPO / "scripts" / "compare_runs.py"), str(tmp_path))
    assert result.returncode == 2 and "no training runs" in result.stderr


def test_a_run_logged_to_csv_alone_is_summarised_as_from_tensorboard(tmp_path):
    both, alone = tmp_path / "both", tmp_path / "csv_only"
    train(make_cfg(both, [*FAST, f"data.root={SAMPLE}", "logger=many", "logger.mlflow=null"]))
    shutil.copytree(both / "csv", alone / "csv")  # the same run, as logger=csv leaves it

    rows = {}
    for run in (both, alone):
        summary = run_cli(str(REPO / "scripts" / "compare_runs.py"), str(run), "--json")
        assert summary.returncode == 0, summary.stderr
        (line,) = summary.stdout.splitlines()
        rows[run] = json.loads(line)
        rows[run].pop("run")
    assert rows[alone]["epochs"] == 2
    assert rows[alone] == pytest.approx(rows[both])  # TensorBoard's figures (read when present)
