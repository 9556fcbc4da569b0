"""Trackers (logger=csv | mlflow | wandb | many): real two-epoch runs on the bundled films, each
read back with the tracker's own client or file format. Every tracker gets the per-epoch figures,
the run's settings and the best epoch's figures. (Epochs as the x axis, one store per project,
evaluation joining its run: test_tracking.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from pneumo.callbacks.run_outcome import RunOutcome
from pneumo.errors import PneumoError
from pneumo.training.fit import train
from tests.helpers import FAST, SAMPLE, csv_rows, free_port, make_cfg, scalars, wandb_run

EPOCHS = 2  # FAST


@pytest.fixture(autouse=True)
def project(tmp_path, monkeypatch) -> Path:
    """Run in a project folder of the test's own: the MLflow store and W&B folder of the
    project (outputs/mlflow.db, outputs/wandb/) are made where pneumo-train runs."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _train(run_dir: Path, *overrides: str) -> dict[str, float]:
    return train(make_cfg(run_dir, [*FAST, f"data.root={SAMPLE}", *overrides]))


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


def _mlflow_run(tracking_uri: str, experiment: str = "train"):
    """The one run of ``experiment`` in an MLflow store, through MLflow's own client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} in {tracking_uri}"
    (run,) = client.search_runs([found.experiment_id])
    return client, run


def _mlflow_curve(client, run, key: str) -> list[float]:
    history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    return [m.value for m in history]


def test_csv_logs_a_row_per_epoch_the_settings_and_the_best_figures(tmp_path):
    results = _train(tmp_path, "logger=csv")
    rows = csv_rows(tmp_path)
    assert _column(rows, "val/auroc")[-1] == pytest.approx(results["val/auroc"])
    assert len(_column(rows, "val/auroc")) == len(_column(rows, "val/loss")) == EPOCHS
    assert _column(rows, "best/val/loss") == [pytest.approx(results["best/val/loss"])]
    settings = (tmp_path / "csv" / "version_0" / "hparams.yaml").read_text()
    assert "data.image_size: 32" in settings and "seed: 42" in settings
    assert not (tmp_path / "tensorboard").exists()


def test_mlflow_records_params_metric_histories_and_best_figures(tmp_path):
    pytest.importorskip("mlflow")
    results = _train(tmp_path, "logger=mlflow")
    # the default store: the project's SQLite file, outputs/mlflow.db where pneumo-train ran
    client, run = _mlflow_run(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["data.image_size"] == "32" and params["seed"] == "42"
    assert params["model.optimizer.lr"] == "0.0003" and params["trainer.max_epochs"] == str(EPOCHS)
    for key in ("val/loss", "val/auroc"):
        curve = _mlflow_curve(client, run, key)
        assert len(curve) == EPOCHS, key  # one value an epoch
        assert curve[-1] == pytest.approx(results[key]), key
    assert run.data.metrics["best/val/loss"] == pytest.approx(results["best/val/loss"])
    assert run.data.metrics["best/val/loss"] == pytest.approx(min(_mlflow_curve(client, run, "val/loss")))


@pytest.mark.slow  # W&B runs its own service process
def test_wandb_offline_run_holds_the_history_config_and_best_figures(tmp_path):
    pytest.importorskip("wandb")
    runs = []
    # two runs of one process, as sweep jobs and search trials are: each gets its own W&B run
    for name in ("a", "b"):
        results = _train(tmp_path / name, "logger=wandb")
        # the project's one W&B folder; the checkpoint names its run's
        known = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["pneumo"]
        offline = Path(known["trackers"]["wandb"]["dir"]).parent
        assert offline.parent == tmp_path / "outputs" / "wandb"
        assert (offline / "files" / "pneumo" / "config.yaml").is_file()
        runs.append((wandb_run(offline), results))
    for run, results in runs:
        assert (run.project, run.group) == ("pneumo", "train")
        assert len(run.curve("val/auroc")) == len(run.curve("val/loss")) == EPOCHS
        # W&B's x axis column (Lightning names it trainer/global_step) holds the epoch
        assert [row["trainer/global_step"] for row in run.history if "val/loss" in row] == [0, 1]
        assert run.curve("val/auroc")[-1] == pytest.approx(results["val/auroc"])
        assert run.curve("best/val/loss") == [pytest.approx(results["best/val/loss"])]
        assert run.summary["best/val/loss"] == pytest.approx(results["best/val/loss"])
        assert run.config["data.image_size"] == 32 and run.config["seed"] == 42
        assert run.exit_code == 0 and "pneumo/stopped" not in run.summary


def test_many_trackers_record_the_same_figures(tmp_path):
    pytest.importorskip("mlflow")
    results = _train(tmp_path, "logger=many")
    tensorboard = scalars(tmp_path)
    client, run = _mlflow_run(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    rows = csv_rows(tmp_path)
    for key in ("val/loss", "val/auroc"):
        curve = tensorboard[key]
        assert len(curve) == EPOCHS
        assert _column(rows, key) == pytest.approx(curve)
        assert _mlflow_curve(client, run, key) == pytest.approx(curve)
    # the best epoch's figure under its own name in each
    assert tensorboard["best/val/loss"] == [pytest.approx(results["best/val/loss"])]
    assert _column(rows, "best/val/loss") == [pytest.approx(results["best/val/loss"])]
    assert run.data.metrics["best/val/loss"] == pytest.approx(results["best/val/loss"])


@pytest.mark.slow  # W&B runs its own service process
def test_a_run_stopped_by_max_time_is_not_marked_finished(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    cfg = make_cfg(
        tmp_path / "run",
        [*FAST, f"data.root={SAMPLE}", "logger=[mlflow,wandb]", "trainer.max_epochs=50"]
        + ["trainer.max_time=00:00:00:01"],
    )
    train(cfg, callbacks=[RunOutcome()])
    _, run = _mlflow_run(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    assert run.info.status == "KILLED"
    stopped = run.data.tags["pneumo.stopped"]
    assert stopped.startswith("stopped by trainer.max_time=00:00:00:01 after ") and stopped.endswith(
        " of 50 epochs"
    )
    (offline,) = (tmp_path / "outputs" / "wandb").glob("offline-run-*")
    recorded = wandb_run(offline)
    assert recorded.summary["pneumo/stopped"] == stopped
    assert recorded.exit_code == 75  # the command's own exit status: W&B shows the run failed


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_a_tracker_without_its_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    with pytest.raises(PneumoError, match=rf"logger.{package} .* pip install 'pneumo\[{package}\]'") as err:
        _train(tmp_path, f"logger={package}")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "checkpoints").exists()  # refused before anything ran


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow  # starts an MLflow server (20-40 s on a busy 2-core machine)
def test_a_run_logs_to_an_mlflow_tracking_server(tmp_path):
    pytest.importorskip("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db"),
            *("--artifacts-destination", str(tmp_path / "artifacts")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the server and its workers end together
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    "the MLflow server did not start"
                )
                time.sleep(0.5)
        results = _train(
            tmp_path / "run",
            "logger=mlflow",
            f"logger.mlflow.tracking_uri={url}",
            "logger.mlflow.artifact_location=null",  # the server keeps them, as docs/training.md says
        )
        with urllib.request.urlopen(
            f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=train"
        ) as got:
            experiment = json.loads(got.read())
        found = _post(
            f"{url}/api/2.0/mlflow/runs/search",
            {"experiment_ids": [experiment["experiment"]["experiment_id"]]},
        )
        run_id = found["runs"][0]["info"]["run_id"]
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/artifacts/list?run_id={run_id}") as got:
            files = {f["path"] for f in json.loads(got.read()).get("files", [])}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    (run,) = found["runs"]
    assert run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert metrics["val/auroc"] == pytest.approx(results["val/auroc"])
    assert metrics["best/val/loss"] == pytest.approx(results["best/val/loss"])
    assert params["data.image_size"] == "32" and params["callbacks.early_stopping.patience"] == "5"
    assert files == {"config.yaml", "metrics.json"}  # kept by the server
    assert not (tmp_path / "run" / "mlflow").exists() and not (tmp_path / "outputs").exists()
