"""A tracker that cannot take the run's records: refused in one line before training, or one
warning after it, never a lost run or a lost evaluation."""

import logging

import pytest

from pneumo.artifacts.trackers import open_stores, record_evaluation
from pneumo.errors import PneumoError

pytest.importorskip("mlflow")

MLFLOW = "lightning.pytorch.loggers.MLFlowLogger"


def test_an_unreachable_tracking_server_is_refused_before_training():
    with pytest.raises(PneumoError, match=r"tracking_uri=http://127.0.0.1:9: no MLflow server answers there"):
        open_stores({"mlflow": {"_target_": MLFLOW, "tracking_uri": "http://127.0.0.1:9"}})


def test_a_store_that_cannot_be_made_is_refused_in_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a file where the store's folder would go
    uri = f"sqlite:///{blocker}/outputs/mlflow.db"
    with pytest.raises(PneumoError, match=r"cannot open the MLflow store \(.*\); point it at a folder"):
        open_stores({"mlflow": {"_target_": MLFLOW, "tracking_uri": uri, "experiment_name": "train"}})


def test_a_wandb_folder_that_cannot_be_written_is_refused_in_one_line(tmp_path):
    node = {"_target_": "lightning.pytorch.loggers.WandbLogger", "save_dir": str(tmp_path / "outputs")}
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "wandb").write_text("")  # a file where W&B's folder would go
    refusal = rf"logger.wandb.save_dir={tmp_path}/outputs: cannot write there"
    with pytest.raises(PneumoError, match=refusal) as err:
        open_stores({"wandb": node})
    assert "\n" not in str(err.value)
    open_stores({"wandb": {**node, "save_dir": str(tmp_path / "elsewhere")}})  # a folder it can write
    assert (tmp_path / "elsewhere" / "wandb").is_dir()


def test_an_evaluation_whose_store_fails_keeps_its_figures(tmp_path, caplog):
    damaged = tmp_path / "mlflow.db"
    damaged.write_bytes(b"this is not an SQLite database" * 100)
    known = {"mlflow": {"tracking_uri": f"sqlite:///{damaged}", "run_id": "0" * 32}}
    metrics = {"split": "test", "threshold": 0.5, "auroc": 0.9}
    with caplog.at_level(logging.WARNING, logger="pneumo.artifacts.trackers"):
        assert record_evaluation(known, metrics, tmp_path / "best.ckpt") is None
    assert "refused the figures" in caplog.text and "they stay in metrics.json only" in caplog.text
