"""An ablation sweep as a user runs it, summarised from its TensorBoard files and drawn against the
epoch; runs logged to CSV alone; per-epoch figures logged at the global step or at the epoch."""

import importlib.util
import json
import shutil

import pytest
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from pneumo.training.fit import train
from tests.helpers import FAST, REPO, SAMPLE, make_cfg, run_cli, scalars

SCRIPT = REPO / "scripts" / "compare_runs.py"


def _script():
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unzip(points):
    """``[(epoch, value), ...]`` as its epochs and its values."""
    return [epoch for epoch, _ in points], [value for _, value in points]


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
        "ablation=recipe,no_smoothing,kermany_cpu/no_ema",
        *FAST,
        f"data.root={SAMPLE}",
        "data.val_fraction=0.5",  # the earliest patients: two of each class on the 16 films
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-2000:]

    table = run_cli(str(SCRIPT), str(sweep))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("all runs: ") and "experiment=kermany_cpu" in lines[0]
    assert "ablation" not in lines[0]
    rows = [line.split(" | ")[0].removeprefix("| ") for line in lines if line.startswith("| ablation=")]
    # a recipe's own ablation is a folder below its job's (Hydra keeps the / of the override)
    assert rows == ["ablation=recipe", "ablation=no_smoothing", "ablation=kermany_cpu/no_ema"]

    as_json = run_cli(str(SCRIPT), str(sweep), "--json", "--no-plot")
    for line in as_json.stdout.splitlines():
        row = json.loads(line)
        assert row["epochs"] == 2
        assert 0.0 <= row["val/auroc"] <= row["best val/auroc"] <= 1.0
        assert row["time/train_epoch_s"] > 0

    # the picture beside the table, named on its last line; drawn from each job's TensorBoard
    # figures, epoch by epoch
    assert lines[-1] == f"picture: {sweep / 'comparison.png'}"
    with Image.open(sweep / "comparison.png") as picture:
        assert picture.format == "PNG" and 800 <= picture.width <= 1600 and 300 <= picture.height <= 800
        picture.verify()
    script = _script()
    for job in script.find_runs(sweep):
        series, logged = script.epoch_series(job), scalars(job)
        assert set(series) == set(script.PLOTTED)
        for tag, points in series.items():
            assert points == list(enumerate(logged[tag]))  # epochs 0, 1 at the figures logged


@pytest.mark.slow
def test_a_folder_without_runs_is_named(tmp_path):
    result = run_cli(str(SCRIPT), str(tmp_path))
    assert result.returncode == 2 and str(tmp_path) in result.stderr


@pytest.mark.slow
def test_evaluation_folders_are_not_runs(tmp_path, trained_ckpt):
    from pneumo.evaluation.report import evaluate

    evaluate(str(trained_ckpt), str(REPO / "data"), "sample", tmp_path / "eval")
    assert list((tmp_path / "eval" / "tensorboard").glob("events.out.tfevents.*"))
    result = run_cli(str(SCRIPT), str(tmp_path))
    assert result.returncode == 2 and "no training runs" in result.stderr


def test_a_run_logged_to_csv_alone_is_summarised_as_from_tensorboard(tmp_path):
    both, alone = tmp_path / "both", tmp_path / "csv_only"
    train(make_cfg(both, [*FAST, f"data.root={SAMPLE}", "logger=many", "logger.mlflow=null"]))
    shutil.copytree(both / "csv", alone / "csv")  # the same run, as logger=csv leaves it

    rows = {}
    for run in (both, alone):
        summary = run_cli(str(SCRIPT), str(run), "--json")
        assert summary.returncode == 0, summary.stderr
        (line,) = summary.stdout.splitlines()
        rows[run] = json.loads(line)
        rows[run].pop("run")
    assert rows[alone]["epochs"] == 2
    assert rows[alone] == pytest.approx(rows[both])  # TensorBoard's figures (read when present)
    # the picture's curves too, epochs read from the CSV rows
    script = _script()
    from_csv, from_tensorboard = script.epoch_series(alone), script.epoch_series(both)
    assert [epoch for epoch, _ in from_csv["val/loss"]] == [0, 1]
    assert set(from_csv) == set(from_tensorboard)
    for tag, points in from_csv.items():
        epochs, values = _unzip(from_tensorboard[tag])
        assert _unzip(points) == (epochs, pytest.approx(values))
    assert (alone / "comparison.png").is_file()


def _log(run, figures, epochs=None):
    """A run's TensorBoard file with ``figures`` (tag -> [(step, value)]) and, if given, Lightning's
    ``epoch`` figure at the steps of ``epochs`` (step -> epoch)."""
    writer = SummaryWriter(str(run / "tensorboard"))
    for tag, points in {**figures, "epoch": list((epochs or {}).items())}.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def test_curves_line_up_by_epoch_whether_logged_at_the_global_step_or_at_the_epoch(tmp_path):
    # batch sizes 4 and 16 on 48 films: 12 and 3 steps an epoch; logged at the global step
    # with Lightning's epoch figure beside, and at the epoch itself without it
    losses = [0.7, 0.5, 0.4]
    _log(tmp_path / "0_b=4", {"val/loss": list(zip([11, 23, 35], losses))}, {11: 0, 23: 1, 35: 2})
    _log(tmp_path / "1_b=16", {"val/loss": list(zip([0, 1, 2], losses))})
    # a resumed run's second launch repeats epoch 1: its later figure stands
    _log(tmp_path / "2_b=8", {"val/loss": [(5, 0.9), (11, 0.8)]}, {5: 0, 11: 1})
    _log(tmp_path / "2_b=8", {"val/loss": [(11, 0.6), (17, 0.3)]}, {11: 1, 17: 2})
    # at the epoch, beside a per-step figure logged at the global step with Lightning's epoch
    per_step = {"train/loss_step": [(step, 0.5) for step in range(9)]}
    _log(
        tmp_path / "5_b=4,per_step",
        {"val/loss": list(zip([0, 1, 2], losses)), **per_step},
        {s: s // 3 for s in range(9)},
    )
    # validated every second epoch (trainer.check_val_every_n_epoch=2): epochs 1 and 3
    _log(tmp_path / "3_b=16,every=2", {"val/loss": [(1, 0.6), (3, 0.5)]})
    _log(tmp_path / "4_b=4,every=2", {"val/loss": [(23, 0.6), (47, 0.5)]}, {23: 1, 47: 3})
    script = _script()
    curves = {run.name: script.epoch_series(run)["val/loss"] for run in script.find_runs(tmp_path)}
    assert _unzip(curves["0_b=4"]) == ([0, 1, 2], pytest.approx(losses))
    assert _unzip(curves["1_b=16"]) == ([0, 1, 2], pytest.approx(losses))
    assert _unzip(curves["5_b=4,per_step"]) == ([0, 1, 2], pytest.approx(losses))
    assert _unzip(curves["2_b=8"]) == ([0, 1, 2], pytest.approx([0.9, 0.6, 0.3]))
    for every_second in ("3_b=16,every=2", "4_b=4,every=2"):
        assert _unzip(curves[every_second]) == ([1, 3], pytest.approx([0.6, 0.5]))


def test_a_one_epoch_run_is_drawn_and_a_bad_destination_named(tmp_path, capsys):
    _log(tmp_path / "run", {"val/loss": [(3, 0.7)], "val/auroc": [(3, 0.8)]}, {3: 0})
    script = _script()
    assert script.main([str(tmp_path), "--plot", str(tmp_path / "run")]) == 2  # a folder
    assert "--plot" in capsys.readouterr().err and not (tmp_path / "comparison.png").exists()
    assert script.main([str(tmp_path), "--no-plot"]) == 0
    assert "picture" not in capsys.readouterr().out and not (tmp_path / "comparison.png").exists()
    assert script.main([str(tmp_path), "--plot", str(tmp_path / "out" / "one.png")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"picture: {tmp_path / 'out' / 'one.png'}"
    with Image.open(tmp_path / "out" / "one.png") as picture:
        picture.verify()
