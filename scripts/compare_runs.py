"""Summarise pneumo-train runs from their TensorBoard or CSV logs: one row a run, as a Markdown table,
and one picture of their curves against the epoch.

    python scripts/compare_runs.py outputs/ablation/kermany_cpu          # a sweep: one row a job
    python scripts/compare_runs.py outputs/train/runs --json             # every run, as JSON lines
    python scripts/compare_runs.py SWEEP --plot report/sweep.png         # the picture elsewhere

A run is any folder holding a ``tensorboard/`` folder of event files with validation scalars
(pneumo-eval's folders, which hold only figures, are left out), or, without one, a ``csv/``
folder of ``metrics.csv`` files (``logger=csv``: ``csv/version_N/``, one a launch of the run, read
in order; a resumed run's are one run). Figures are the last
epoch's (``val/at_threshold/*`` at the threshold the run ships, and accuracy at 0.5), the best
validation AUROC over all epochs and the median training time an epoch. AUROC is the column
to compare across runs: val/loss is not comparable when label smoothing or class weights differ.

The picture (``comparison.png`` in the folder read, ``--plot PATH`` elsewhere, ``--no-plot`` none)
draws, one line a run named as in the table, the validation loss, the validation accuracy (at
the threshold each run ships and at 0.5) and the seconds an epoch takes (training and
validation) against the epoch, counted from 0 as Lightning counts it. A point's epoch is the
``epoch`` figure Lightning logs at the same step (runs that log their per-epoch figures at the
global step), or else the step itself (runs that log them at the epoch; see ``by_epoch``), so
runs of different batch sizes line up epoch by epoch whichever way their files were written.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import re
import statistics
import sys
import textwrap
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pneumo.artifacts.output import atomic_path, check_file_destination
from pneumo.errors import PneumoError

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


Points = dict[str, list[tuple[int, float]]]  # tag -> (step, value) a point


def tensorboard_points(run: Path) -> Points:
    """Every scalar curve of a run's ``tensorboard/`` event files, by tag, in logging order."""
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _version(path: Path) -> tuple[int, str]:
    """``csv/version_10/`` after ``csv/version_9/``."""
    number = re.fullmatch(r"version_(\d+)", path.parent.name)
    return (int(number.group(1)) if number else -1, str(path))


def csv_points(run: Path) -> Points:
    """Every curve of a run's ``csv/`` metrics files, by column, in step order (``epoch`` too).

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
                    if tag != "step" and cell not in (None, ""):
                        curves.setdefault(tag, {})[step] = float(cell)
    return {tag: sorted(points.items()) for tag, points in curves.items()}


def read_points(run: Path) -> Points:
    """A run's curves from its TensorBoard files, or its CSV files where it has no TensorBoard folder."""
    return tensorboard_points(run) if (run / "tensorboard").is_dir() else csv_points(run)


def named(curves: dict[str, list], tag: str) -> list:
    """The curve ``tag`` of ``curves``, or of its name before the ``at_0.5`` names: runs logged
    before them have ``val/acc``, ``train/acc``, ... at 0.5. Empty where the run has neither."""
    old = tag.replace("/at_0.5", "") if "/at_0.5/" in tag else tag
    return curves.get(tag) or curves.get(old) or []


def summarise(run: Path) -> dict[str, float]:
    """The last epoch's figures, the best validation AUROC and the median epoch time of one run,
    from its TensorBoard files, or its CSV files where it has no TensorBoard folder."""
    curves = {tag: [value for _, value in points] for tag, points in read_points(run).items()}

    def values(tag: str) -> list[float]:
        return named(curves, tag)

    row: dict[str, float] = {"epochs": len(values("val/auroc"))}
    for tag in COLUMNS:
        if values(tag):
            row[tag] = values(tag)[-1]
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


# The picture's panels: a title, the y axis, and its curves (a figure, its line style, what the
# style means where a panel has two). The threshold a run ships is chosen on the validation
# films it is scored on, so accuracy there flatters; accuracy at 0.5 is the same rule for every run.
PANELS = (
    ("validation loss", "val/loss", (("val/loss", "-", ""),)),
    (
        "validation accuracy",
        "accuracy",
        (("val/at_threshold/acc", "-", "at the run's threshold"), ("val/at_0.5/acc", "--", "at 0.5")),
    ),
    (
        "time an epoch",
        "seconds",
        (("time/train_epoch_s", "-", "training"), ("time/val_epoch_s", "--", "validation")),
    ),
)
STYLES = {"-": "solid", "--": "dashed"}
PLOTTED = tuple(tag for _, _, curves in PANELS for tag, _, _ in curves)


def by_epoch(points: list[tuple[int, float]], epochs: dict[int, float]) -> list[tuple[int, float]]:
    """One figure's ``(step, value)`` points as ``(epoch, value)``, in epoch order.

    Lightning logs an ``epoch`` figure beside every figure a module logs without a step of its
    own (``epochs``: step -> epoch). Where there is one at each of the points' steps and it
    numbers them in rising epochs, the figure was logged at the global step and that is each
    point's epoch; otherwise the figure was logged at the epoch, its step (an ``epoch`` found
    there belongs to a per-step figure logged at that global step). A step logged again (a
    resumed run's later launch repeats it) keeps its later value.
    """
    values = dict(points)
    steps = sorted(values)
    if all(step in epochs for step in steps):
        logged = [int(epochs[step]) for step in steps]
        if logged == sorted(set(logged)):  # rising, none twice
            return [(epoch, values[step]) for epoch, step in zip(logged, steps)]
    return [(step, values[step]) for step in steps]


def epoch_series(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The curves the picture draws for ``run``, by figure, as ``(epoch, value)`` points; a figure
    the run did not log is left out."""
    points = read_points(run)
    epochs = dict(points.get("epoch", []))
    series = {tag: by_epoch(named(points, tag), epochs) for tag in PLOTTED}
    return {tag: curve for tag, curve in series.items() if curve}


def plot(series: dict[str, dict[str, list[tuple[int, float]]]], title: str, path: Path) -> None:
    """Draw ``series`` (run name -> ``epoch_series``) as one PNG at ``path``: a panel a figure,
    a colour a run, the runs' names in one legend below the panels."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    palette = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
    colours = [palette(i) for i in range(palette.N)]
    longest = max(len(name) for name in series)
    columns = max(1, min(len(series), 120 // (longest + 6)))  # legend columns that fit the width
    rows = -(-len(series) // columns)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(12, 3.8 + 0.25 * rows), layout="constrained")
    fig.suptitle("\n".join(textwrap.wrap(title, 150, break_on_hyphens=False, replace_whitespace=False)))
    for ax, (heading, ylabel, curves) in zip(axes, PANELS):
        for colour, run in zip(itertools.cycle(colours), series.values()):
            for tag, style, _ in curves:
                points = run.get(tag, [])
                ax.plot(
                    [epoch for epoch, _ in points],
                    [value for _, value in points],
                    linestyle=style,
                    color=colour,
                    # a marker an epoch on short runs: a run of one epoch is only its marker
                    marker="o" if len(points) <= 15 else None,
                    markersize=4,
                )
        if len(curves) > 1:  # which style is which figure, where no curve can hide it
            heading += "\n" + "; ".join(f"{STYLES[style]}: {what}" for _, style, what in curves)
        values = [value for run in series.values() for tag, _, _ in curves for _, value in run.get(tag, [])]
        if values and min(values) > 0 and max(values) > 10 * min(values):
            # a loss from scratch can start hundreds of times above where it ends
            ax.set_yscale("log")
            ylabel += " (log scale)"
        ax.set(title=heading, xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not values:
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes)
            ax.set(xticks=[], yticks=[])
    handles = [Line2D([], [], color=c, marker="o") for c, _ in zip(itertools.cycle(colours), series)]
    fig.legend(handles, list(series), loc="outside lower center", ncol=columns, fontsize="small")
    with atomic_path(path) as partial:
        fig.savefig(partial, format=path.suffix.lstrip(".").lower(), dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, help="a run folder, a sweep folder or any folder above runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object a run instead")
    parser.add_argument(
        "--plot", type=Path, metavar="PATH", help="where the picture goes (default: ROOT/comparison.png)"
    )
    parser.add_argument("--no-plot", action="store_true", help="write no picture")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a folder", file=sys.stderr)
        return 2
    picture = None if args.no_plot else args.plot or args.root / "comparison.png"
    try:
        if picture is not None:
            named = f"--plot {picture}" if args.plot else str(picture)
            if picture.suffix.lower() not in (".png", ".svg", ".pdf"):
                raise PneumoError(f"cannot write {named}: give a .png (or .svg, .pdf) file name")
            check_file_destination(picture, named)
        return report(args.root, args.json, picture)
    except PneumoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def report(root: Path, as_json: bool, picture: Path | None) -> int:
    """Print the runs under ``root`` as a table (or JSON lines) and draw them at ``picture``."""
    summaries = {run: summarise(run) for run in find_runs(root)}
    runs = [run for run, row in summaries.items() if row["epochs"]]
    if not runs:
        print(
            f"error: no training runs (RUN/tensorboard/ or RUN/csv/ with val/auroc) under {root}",
            file=sys.stderr,
        )
        return 2
    names, common = run_names(runs, root)
    rows = {name: summaries[run] for name, run in zip(names, runs)}
    if as_json:
        for name, row in rows.items():
            print(json.dumps({"run": name, **row}))
    else:
        if common:
            print("all runs: " + " ".join(common) + "\n")
        print(markdown(rows))
    if picture is not None:
        title = root.resolve().name + (f"\nall runs: {' '.join(common)}" if common else "")
        plot({name: epoch_series(run) for name, run in zip(names, runs)}, title, picture)
        # beside the JSON lines, not among them
        print(f"picture: {picture}", file=sys.stderr if as_json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
