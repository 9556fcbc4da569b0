"""scripts/time_to_model.py reads a real run's files: its best epoch and when it was reached."""

import importlib.util

from pneumo.training.fit import train
from tests.helpers import FAST, REPO, SAMPLE, make_cfg, scalars


def _script():
    spec = importlib.util.spec_from_file_location("time_to_model", REPO / "scripts" / "time_to_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_to_the_best_epoch_and_to_each_milestone(tmp_path):
    train(
        make_cfg(
            tmp_path, [*FAST, f"data.root={SAMPLE}", "trainer.max_epochs=3", "callbacks.early_stopping=null"]
        )
    )
    (tmp_path / "train.log").write_text(
        "[2026-12-05 10:00:00,000][pneumo][INFO] - start\n"
    )  # Hydra writes it
    aurocs = scalars(tmp_path)["val/auroc"]
    row = _script().time_to_model(tmp_path, [0.0, 1.01])
    assert row["epochs"] == 3 and row["best_auroc"] == max(aurocs)
    assert row["best_epoch"] == aurocs.index(max(aurocs))  # the first epoch with the best AUROC
    assert 0 < row["minutes_to_auroc_0.0"] <= row["minutes_to_best"] <= row["minutes_in_all"]
    assert row["minutes_to_auroc_1.01"] is None  # never reached
