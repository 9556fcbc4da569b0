"""Summarise pneumo-train runs from their TensorBoard or CSV logs: one row a run, as a Markdown table.

    python scripts/compare_runs.py outputs/ablation/kermany_cpu          # a sweep: one row a job
    python scripts/compare_runs.py outputs/train/runs --json             # every run, as JSON lines

A run is any folder holding a ``tensorboard/`` folder of event files with validation scalars
(pneumo-eval's folders, which hold only figures, are left out), or, without one, a ``csv/``
folder of ``metrics.csv`` files (``logger=csv``: ``csv/version_N/``, one a launch of the run, read
in order; a resumed run's are one run). Figures are the last
epoch's (``val/at_threshold/*`` at the threshold the run ships, and accuracy at 0.5), the best
validation AUROC over all epochs and the median training time an epoch. AUROC is the column
to compare across runs: val/loss is not comparable when label smoothing or class weights differ.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

COLUMNS = {
    "epochs": "epochs",
    "val/auroc": "AUROC",
    "best val/auroc": "best AUROC",
    "val/threshold": "threshold",
    "val/at_threshold/acc": "acc",
    "val/at_threshold/sensitivity": "sens",
    "val/at_threshold/specificity": "spec",
    "val/at_0.5/acc": "acc at 0.5",
    "train/at_0.5/acc": "train acc at 0.5",
    "time/train_epoch_s": "s/epoch",
}


def _csv_run(metrics: Path) -> Path | None:
    """The run folder of a CSV log: the folder holding the ``csv/`` folder above ``metrics``."""
    return next((p.parent for p in metrics.parents if p.name == "csv"), None)


def find_runs(root: Path) -> list[Path]:
    """Run folders under ``root`` (or ``root`` itself): those holding ``tensorboard/`` event files
    or ``csv/`` metrics files."""
    runs = {p.parent.parent for p in root.rglob("tensorboard/events.out.tfevents.*")}
    runs |= {run for p in root.rglob("csv/**/metrics.csv") if (run := _csv_run(p)) is not None}

    def job_order(run: Path) -> tuple[int, str]:  # sweep jobs 0, 1, ..., 10 in number order
        # by the job's folder below root: an override with a / (ablation=kermany_cpu/no_ema,
        # data/augment=strong) puts the rest of the job's name in a folder below it
        below = run.relative_to(root).parts if run != root else (run.name,)
        number = below[0].partition("_")[0]
        return (int(number) if number.isdigit() else -1, str(run))

    return sorted(runs, key=job_order)


def run_names(runs: list[Path], root: Path) -> tuple[list[str], list[str]]:
    """Short names for ``runs``, and the overrides all of them share.

    A sweep job's folder is ``NUM_KEY=VALUE,KEY=VALUE``: it is named by the overrides that set it
    apart from the other jobs. Any other run is named by its path below ``root``.
    """
    names = [str(run.relative_to(root)) if run != root else run.name for run in runs]
    jobs = [name.partition("_") for name in names]
    if not all(number.isdigit() and "=" in overrides for number, _, overrides in jobs):
        return names, []
    items = [overrides.split(",") for _, _, overrides in jobs]
    common = [item for item in items[0] if all(item in other for other in items)] if len(items) > 1 else []
    short = [",".join(i for i in job if i not in common) or "(no overrides)" for job in items]
    return short, common


def tensorboard_scalars(run: Path) -> dict[str, list[float]]:
    """Every scalar curve of a run's ``tensorboard/`` event files, by tag, in logging order."""
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _version(path: Path) -> tuple[int, str]:
    """``csv/version_10/`` after ``csv/version_9/``."""
    number = re.fullmatch(r"version_(\d+)", path.parent.name)
    return (int(number.group(1)) if number else -1, str(path))


def csv_scalars(run: Path) -> dict[str, list[float]]:
    """Every curve of a run's ``csv/`` metrics files, by column, in step order.

    Lightning's CSVLogger writes a row per logging call, with empty cells for the figures it
    did not log then. The launches of a resumed run are read in version order; a step logged
    again by a later launch replaces the earlier value.
    """
    curves: dict[str, dict[int, float]] = {}
    for path in sorted((run / "csv").rglob("metrics.csv"), key=_version):
        with path.open(newline="") as file:
            for line in csv.DictReader(file):
                step = int(float(line.get("step") or 0))
                for tag, cell in line.items():
                    if tag not in ("step", "epoch") and cell not in (None, ""):
                        curves.setdefault(tag, {})[step] = float(cell)
    return {tag: [points[step] for step in sorted(points)] for tag, points in curves.items()}


def summarise(run: Path) -> dict[str, float]:
    """The last epoch's figures, the best validation AUROC and the median epoch time of one run,
    from its TensorBoard files, or its CSV files where it has no TensorBoard folder."""
    curves = tensorboard_scalars(run) if (run / "tensorboard").is_dir() else csv_scalars(run)

    def values(tag: str) -> list[float]:
        return curves.get(tag, [])

    row: dict[str, float] = {"epochs": len(values("val/auroc"))}
    for tag in COLUMNS:
        # runs logged before the at_0.5 names: their val/acc, train/acc were at 0.5
        old = tag.replace("/at_0.5", "") if "/at_0.5/" in tag else None
        for name in (tag, old):
            if name and values(name):
                row[tag] = values(name)[-1]
                break
    if values("val/auroc"):
        row["best val/auroc"] = max(values("val/auroc"))
    if values("time/train_epoch_s"):
        row["time/train_epoch_s"] = statistics.median(values("time/train_epoch_s"))
    return row


def markdown(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table, one row a run, in ``COLUMNS`` order."""

    def cell(key: str, value: float | None) -> str:
        if value is None:
            return ""
        if key == "epochs":
            return str(int(value))
        return f"{value:.0f}" if key.startswith("time/") else f"{value:.3f}"

    lines = [
        "| run | " + " | ".join(COLUMNS.values()) + " |",
        "| --- |" + " ---: |" * len(COLUMNS),
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(k, row.get(k)) for k in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, help="a run folder, a sweep folder or any folder above runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object a run instead")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a folder", file=sys.stderr)
        return 2
    summaries = {run: summarise(run) for run in find_runs(args.root)}
    runs = [run for run, row in summaries.items() if row["epochs"]]
    if not runs:
        print(
            f"error: no training runs (RUN/tensorboard/ or RUN/csv/ with val/auroc) under {args.root}",
            file=sys.stderr,
        )
        return 2
    names, common = run_names(runs, args.root)
    rows = {name: summaries[run] for name, run in zip(names, runs)}
    if args.json:
        for name, row in rows.items():
            print(json.dumps({"run": name, **row}))
        return 0
    if common:
        print("all runs: " + " ".join(common) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
