"""Tracking a batch-size sweep as a user compares it: every per-epoch figure at x = the epoch in
TensorBoard, CSV and MLflow (read back from the real files and store); the sweep's MLflow runs in
one store; a run's whole config and config.yaml there before its first epoch ends; pneumo-eval's
test figures in the run that trained the checkpoint; the versions that made a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from pneumo.evaluation.report import evaluate
from pneumo.training.fit import train
from tests.helpers import FAST, SAMPLE, csv_rows, make_cfg, run_cli, scalar_steps

mlflow_tracking = pytest.importorskip("mlflow.tracking")

EPOCHS = 3
# figures the module and the callbacks log once an epoch, each on the epoch axis
PER_EPOCH = (
    "train/loss",
    "val/loss",
    "val/auroc",
    "val/at_threshold/sensitivity",
    "time/train_epoch_s",
    "time/val_epoch_s",
    "lr-AdamW",
)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project folder, where pneumo-train runs: its outputs/mlflow.db is the default store."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _client(project: Path):
    return mlflow_tracking.MlflowClient(tracking_uri=f"sqlite:///{project}/outputs/mlflow.db")


def _runs(client, experiment: str = "train") -> list:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return client.search_runs([found.experiment_id])


def _train(run_dir: Path, *overrides: str, callbacks: tuple[L.Callback, ...] = ()) -> dict[str, float]:
    return train(make_cfg(run_dir, [*FAST, f"data.root={SAMPLE}", *overrides]), callbacks)


def _meta(run_dir: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)["pneumo"]


def test_a_batch_size_sweep_lines_up_by_epoch_in_every_tracker(project):
    # 12 training films: 3 steps an epoch at batch size 4, 1 at 16
    runs = {}
    for batch_size in (4, 16):
        run_dir = project / "outputs" / "train" / "multiruns" / f"data.batch_size={batch_size}"
        overrides = ("logger=many", f"trainer.max_epochs={EPOCHS}", f"data.batch_size={batch_size}")
        runs[batch_size] = (run_dir, _train(run_dir, *overrides))
    epochs = list(range(EPOCHS))
    client = _client(project)
    stored = {int(run.data.params["data.batch_size"]): run for run in _runs(client)}
    assert sorted(stored) == [4, 16]  # the sweep's runs in the project's one store
    for batch_size, (run_dir, results) in runs.items():
        steps = scalar_steps(run_dir)
        rows = csv_rows(run_dir)
        run = stored[batch_size]
        for key in PER_EPOCH:
            assert steps[key] == epochs, (batch_size, key)
            assert [int(row["step"]) for row in rows if row.get(key)] == epochs, (batch_size, key)
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == epochs, (batch_size, key)
        # the best epoch's figure at the last epoch, in every tracker
        assert steps["best/val/loss"] == [EPOCHS - 1]
        assert [int(row["step"]) for row in rows if row.get("best/val/loss")] == [EPOCHS - 1]
        assert run.data.metrics["best/val/loss"] == pytest.approx(results["best/val/loss"])
        # the whole config, callbacks included, and its file; the best figures as a file
        params = run.data.params
        assert params["callbacks.early_stopping.patience"] == "5"
        assert params["trainer.max_epochs"] == str(EPOCHS) and params["seed"] == "42"
        artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
        assert f"batch_size: {batch_size}" in (artifacts / "config.yaml").read_text()
        best = json.loads((artifacts / "metrics.json").read_text())
        assert best["best/val/loss"] == pytest.approx(results["best/val/loss"])
        # the checkpoint knows its run, and what made it
        meta = _meta(run_dir)
        assert meta["trackers"]["mlflow"]["run_id"] == run.info.run_id
        assert meta["versions"]["torch"] == torch.__version__.split("+")[0]
        assert {"torchvision", "lightning", "pneumo"} <= set(meta["versions"])


class _ReadStoreAfterFirstEpoch(L.Callback):
    """Read the run's MLflow params and files while it is still training."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self.seen: dict = {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != 0:
            return
        client = _client(self.project)
        (run,) = _runs(client)
        self.seen = {
            "status": run.info.status,
            "params": run.data.params,
            "files": [f.path for f in client.list_artifacts(run.info.run_id)],
        }


def test_a_run_carries_its_config_from_its_first_epoch_and_evaluation_joins_it(project):
    reader = _ReadStoreAfterFirstEpoch(project)
    run_dir = project / "outputs" / "run"
    _train(run_dir, "logger=mlflow", callbacks=(reader,))
    assert reader.seen["status"] == "RUNNING"  # read before training ended
    assert reader.seen["params"]["callbacks.early_stopping.patience"] == "5"
    assert reader.seen["params"]["data.batch_size"] == "4"
    assert "config.yaml" in reader.seen["files"]

    # pneumo-eval's figures go to the run that trained the checkpoint, named by their split
    # (eval/val/... here; test/... for the test split), tagged with the evaluated file
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    metrics = evaluate(str(ckpt), str(SAMPLE), "val", project / "eval")
    client = _client(project)
    (run,) = _runs(client)
    assert metrics["tracker"] == {
        "tracking_uri": f"sqlite:///{project}/outputs/mlflow.db",
        "run_id": run.info.run_id,
        "joined": "training run",
    }
    logged = run.data.metrics
    assert not any(key.startswith("test/") for key in logged)  # these are validation films
    assert logged["eval/val/auroc"] == pytest.approx(metrics["auroc"])
    assert logged["eval/val/threshold"] == pytest.approx(metrics["threshold"])
    for name in ("sensitivity", "specificity"):
        assert logged[f"eval/val/{name}"] == pytest.approx(metrics[name])
        low, high = metrics["intervals"]["at_threshold"]["figures"][name]["bootstrap"]
        assert (logged[f"eval/val/{name}_low"], logged[f"eval/val/{name}_high"]) == pytest.approx((low, high))
    assert run.data.tags["evaluated/val"] == str(ckpt.resolve())
    # metrics.json and the model card name what trained the checkpoint
    versions = _meta(run_dir, "best.ckpt")["versions"]
    assert metrics["trained_with"] == versions
    card = (project / "eval" / "model_card.md").read_text()
    assert f"torch {versions['torch']}" in card and f"lightning {versions['lightning']}" in card

    # a checkpoint whose run is gone from its store: a run of its own, named after the file
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["pneumo"]["trackers"]["mlflow"]["run_id"] = "0" * 32
    orphan = project / "orphan.ckpt"
    torch.save(checkpoint, orphan)
    metrics = evaluate(str(orphan), str(SAMPLE), "val", project / "eval_orphan")
    assert metrics["tracker"]["joined"] == "own run"
    own = client.get_run(metrics["tracker"]["run_id"])
    assert own.info.run_name == "eval orphan.ckpt"
    assert own.data.metrics["eval/val/auroc"] == pytest.approx(metrics["auroc"])
    # a store that cannot be reached: the evaluation stands, with its figures in metrics.json
    checkpoint["pneumo"]["trackers"]["mlflow"]["tracking_uri"] = "http://127.0.0.1:9"
    torch.save(checkpoint, orphan)
    assert evaluate(str(orphan), str(SAMPLE), "val", project / "eval_away")["tracker"] is None


@pytest.mark.slow  # two training processes at once, as launcher=local runs a sweep's jobs
def test_parallel_sweep_jobs_share_one_fresh_mlflow_store(project):
    sweep = project / "outputs" / "sweep"
    done = run_cli(
        *("-m", "pneumo.cli.train", "-m", "launcher=local", "logger=mlflow"),
        *(*FAST, f"data.root={SAMPLE}", "data.num_workers=0", "trainer.max_epochs=1"),
        *("data.batch_size=4,16", f"hydra.sweep.dir={sweep}"),
        cwd=project,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "checkpoints" / "best.ckpt").is_file())
    assert [job.split("_", 1)[0] for job in jobs] == ["0", "1"]
    assert "batch_size=4" in jobs[0] and "batch_size=16" in jobs[1]
    # each job ran in a submitit process of its own, which left its log and result there
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2
    client = _client(project)
    runs = _runs(client)
    assert sorted(int(r.data.params["data.batch_size"]) for r in runs) == [4, 16]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [0]


def test_a_resumed_run_goes_on_at_the_next_epoch_with_no_point_twice(project):
    run_dir = project / "outputs" / "run"
    _train(run_dir, "logger=many", "trainer.max_epochs=2")
    last = run_dir / "checkpoints" / "last.ckpt"
    first_run = _meta(run_dir)["trackers"]["mlflow"]["run_id"]
    _train(run_dir, "logger=many", "trainer.max_epochs=3", f"ckpt_path={last}")
    steps = scalar_steps(run_dir)  # both launches' event files, as TensorBoard reads them
    for key in PER_EPOCH:
        assert steps[key] == [0, 1, 2], key
    # MLflow: the resume is a run of its own, from its first epoch on, with the whole config;
    # its checkpoints name it
    client = _client(project)
    resumed = _meta(run_dir)["trackers"]["mlflow"]["run_id"]
    assert resumed != first_run
    for run_id, epochs in ((first_run, [0, 1]), (resumed, [2])):
        assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == epochs
        assert client.get_run(run_id).data.params["data.batch_size"] == "4"
