"""scripts/time_to_model.py reads a real run's files: its best epoch and when it was reached."""

from datetime import datetime, timedelta

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from pneumo.training.fit import train
from tests.helpers import FAST, SAMPLE, load_script, make_cfg


def _auroc_events(run_dir) -> list[tuple[float, float]]:
    """(wall time, value) of every val/auroc event, read record by record from the event files."""
    found = []
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "val/auroc":
                    found.append(
                        (
                            event.wall_time,
                            value.tensor.float_val[0] if value.tensor.float_val else value.simple_value,
                        )
                    )
    return sorted(found)


def test_time_to_the_best_epoch_and_to_each_milestone(tmp_path):
    started = datetime.now().replace(microsecond=0) - timedelta(minutes=2)
    overrides = [*FAST, f"data.root={SAMPLE}", "trainer.max_epochs=3", "callbacks.early_stopping=null"]
    train(make_cfg(tmp_path, overrides))
    # train.log's first line is the command's start (Hydra writes it; a composed run has none):
    # two minutes before the training began, so each figure is two minutes and some seconds
    (tmp_path / "train.log").write_text(f"[{started:%Y-%m-%d %H:%M:%S},000][pneumo][INFO] - start\n")
    events = _auroc_events(tmp_path)
    values = [v for _, v in events]
    best = values.index(max(values))  # the first epoch with the best AUROC
    first_above_half = next((i for i, v in enumerate(values) if v >= 0.5), None)

    row = load_script("time_to_model").time_to_model(tmp_path, [0.0, 0.5, 1.01])

    def minutes(epoch: int) -> float:
        return (events[epoch][0] - started.timestamp()) / 60

    assert row["epochs"] == len(events) == 3
    assert row["best_epoch"] == best and row["best_auroc"] == pytest.approx(max(values))
    assert row["minutes_to_best"] == pytest.approx(minutes(best), abs=1e-6)
    assert row["minutes_in_all"] == pytest.approx(minutes(2), abs=1e-6)
    assert row["minutes_to_auroc_0.0"] == pytest.approx(minutes(0), abs=1e-6)  # the first epoch reaches 0
    expected_half = None if first_above_half is None else pytest.approx(minutes(first_above_half), abs=1e-6)
    assert row["minutes_to_auroc_0.5"] == expected_half
    assert row["minutes_to_auroc_1.01"] is None  # never reached
    # the start two minutes back and a run of seconds: every figure just above two minutes
    assert 2 <= row["minutes_to_auroc_0.0"] <= row["minutes_in_all"] < 2 + 10
