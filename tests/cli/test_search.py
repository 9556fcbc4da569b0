"""pneumo-search: an Optuna study whose trials are real pneumo-train runs on the bundled films."""

import json
import logging
from pathlib import Path

import optuna
import pytest

from pneumo.artifacts.checkpoint import read_checkpoint, read_meta
from pneumo.errors import PneumoError
from pneumo.training.search import parse_space, search
from tests.helpers import FAST, REPO, SAMPLE, run_cli

TINY = [*FAST, f"data.root={SAMPLE}", "data.num_workers=0"]


def _run_config(trial) -> dict:
    """The resolved config a trial's best.ckpt records: what the run really trained with."""
    path = Path(trial.user_attrs["run_dir"]) / "checkpoints" / "best.ckpt"
    return read_meta(read_checkpoint(path), path).config


@pytest.mark.slow  # compare_runs runs as a command
def test_three_trials_are_runs_compare_runs_reads_and_the_search_resumes(tmp_path):
    study = search([*TINY, f"search.dir={tmp_path}", "search.n_trials=3"])

    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert study.direction.name == "MAXIMIZE" and (tmp_path / "study.db").is_file()
    for trial in study.trials:
        config = _run_config(trial)
        # the sampled settings reached the run, and it kept and scored its best epoch by AUROC
        assert config["model"]["optimizer"]["lr"] == trial.params["model.optimizer.lr"]
        assert config["data"]["batch_size"] == trial.params["data.batch_size"]
        assert config["model"]["label_smoothing"] == trial.params["model.label_smoothing"]
        assert config["monitor"] == {"metric": "val/auroc", "mode": "max"}
        assert Path(trial.user_attrs["run_dir"]).name.startswith(f"{trial.number}_")
        assert sorted(trial.intermediate_values) == [0, 1]  # val/auroc reported each epoch

    table = run_cli(str(REPO / "scripts" / "compare_runs.py"), str(tmp_path), "--json")
    assert table.returncode == 0, table.stderr
    rows = [json.loads(line) for line in table.stdout.splitlines()]
    # each trial's value is its run's best validation AUROC, as TensorBoard recorded it
    assert [row["best val/auroc"] for row in rows] == pytest.approx([t.value for t in study.trials])
    assert all(row["epochs"] == 2 for row in rows)

    # launched again into its folder, the search continues: one more trial, new settings
    earlier = [t.params for t in study.trials]
    resumed = search([*TINY, f"search.dir={tmp_path}", "search.n_trials=4"])
    assert [t.number for t in resumed.trials] == [0, 1, 2, 3]
    assert resumed.trials[3].state.name == "COMPLETE"
    assert resumed.trials[3].params not in earlier


def test_a_pruned_trial_stops_its_run_and_is_marked_pruned(tmp_path):
    # a pruner that prunes any AUROC below 1.01, that is every trial after its first epoch
    threshold = [
        "search.pruner._target_=optuna.pruners.ThresholdPruner",
        "~search.pruner.n_startup_trials",
        "~search.pruner.n_warmup_steps",
        "+search.pruner.lower=1.01",
    ]
    study = search([*TINY, "trainer.max_epochs=3", f"search.dir={tmp_path}", "search.n_trials=1", *threshold])

    (trial,) = study.trials
    assert trial.state.name == "PRUNED"
    assert list(trial.intermediate_values) == [0]
    last = Path(trial.user_attrs["run_dir"]) / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["epoch"] == 0  # stopped after the first of 3 epochs


def test_a_trial_that_diverges_fails_and_the_search_goes_on(tmp_path, caplog):
    space = ["~search.params", '+search.params={model.optimizer.lr:"choice(1e30)"}']
    with caplog.at_level(logging.WARNING, logger="pneumo.training.search"):
        study = search([*TINY, "trainer.max_epochs=1", f"search.dir={tmp_path}", "search.n_trials=2", *space])
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    failures = [r.getMessage() for r in caplog.records if r.name == "pneumo.training.search"]
    assert len(failures) == 2 and all("lower the learning rate" in message for message in failures)


def test_a_problem_every_trial_shares_stops_the_search(tmp_path):
    with pytest.raises(PneumoError, match="none"):
        search([*TINY, f"data.root={tmp_path}/none", f"search.dir={tmp_path}/search", "search.n_trials=3"])


def test_a_search_trains_on_one_device(tmp_path):
    with pytest.raises(PneumoError, match="trainer.devices=1"):
        search([*TINY, "trainer.devices=2", f"search.dir={tmp_path}"])


def test_search_space_in_hydra_sweep_syntax():
    space = parse_space(
        {
            "model.optimizer.lr": "tag(log, interval(1e-5, 1e-2))",
            "data.batch_size": "choice(16, 32)",
            "data/augment": "choice(default, strong)",
            "trainer.max_epochs": "tag(int, interval(5, 20))",
        }
    )
    lr = space["model.optimizer.lr"]
    assert (lr.low, lr.high, lr.log) == (1e-5, 1e-2, True)
    assert space["data.batch_size"].choices == (16, 32)
    assert space["data/augment"].choices == ("default", "strong")
    assert (space["trainer.max_epochs"].low, space["trainer.max_epochs"].high) == (5, 20)
    with pytest.raises(PneumoError, match="search.params.data.batch_size=range"):
        parse_space({"data.batch_size": "range(8, 64, 8)"})


def test_a_search_continued_with_another_goal_is_refused(tmp_path):
    # Optuna would load the study with its first direction whatever this launch asks for
    study = search([*TINY, f"search.dir={tmp_path}", "search.n_trials=1", "trainer.max_epochs=1"])
    assert study.direction.name == "MAXIMIZE" and len(study.trials) == 1
    for other in (["monitor.metric=val/loss", "monitor.mode=min"], ["optimized_metric=val/auroc"]):
        with pytest.raises(PneumoError, match=rf"{tmp_path}/study.db is a search to maximize best/val/auroc"):
            search([*TINY, f"search.dir={tmp_path}", "search.n_trials=2", *other])
    kept = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path}/study.db")
    assert len(kept.trials) == 1  # the refused launches ran nothing
