"""Time to a good model: from a run's start to its best checkpoint and to validation AUROC milestones.

    python scripts/time_to_model.py outputs/kermany_cpu/runs/DATE [RUN ...] [--milestones 0.99 0.995]

Read from the run's own files: its start is the first line of ``train.log`` (logged seconds
after the command starts, once Python has imported it, before the data are read), each epoch's
end the wall time TensorBoard recorded
with its ``val/auroc``. The best checkpoint is the epoch with the best ``val/auroc`` (the
``kermany_cpu`` recipe keeps its best epoch by validation AUROC). The figures are the machine's
on the day the run ran: a run that shared the machine with other work reads slower.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def start_time(run: Path) -> float:
    """When the command started: the timestamp of train.log's first line (``[YYYY-mm-dd HH:MM:SS,mmm]``)."""
    with (run / "train.log").open() as log:
        first = log.readline()
    stamp = first[1 : first.index("]")]
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def time_to_model(run: Path, milestones: list[float]) -> dict[str, float | int | None]:
    """Minutes from the start to the best epoch's validation and to each AUROC milestone."""
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    aurocs = events.Scalars("val/auroc")
    start = start_time(run)
    best = max(range(len(aurocs)), key=lambda i: (aurocs[i].value, -i))  # the first of equals
    row: dict[str, float | int | None] = {
        "epochs": len(aurocs),
        "best_epoch": best,
        "best_auroc": aurocs[best].value,
        "minutes_to_best": (aurocs[best].wall_time - start) / 60,
        "minutes_in_all": (aurocs[-1].wall_time - start) / 60,
    }
    for milestone in milestones:
        reached = next((e for e in aurocs if e.value >= milestone), None)
        row[f"minutes_to_auroc_{milestone}"] = None if reached is None else (reached.wall_time - start) / 60
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, help="run directories (holding train.log and tensorboard/)"
    )
    parser.add_argument("--milestones", nargs="+", type=float, default=[0.99, 0.995])
    args = parser.parse_args()
    for run in args.runs:
        print(json.dumps({"run": str(run), **time_to_model(run, args.milestones)}))


if __name__ == "__main__":
    main()
