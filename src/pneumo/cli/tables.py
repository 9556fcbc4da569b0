"""The commands' results as console tables for a person: pneumo-eval's report (figures with
their intervals, threshold, flow, calibration, groups, a comparison) and pneumo-data's
verification. Only printing: the figures come from ``pneumo.evaluation`` and ``pneumo.data``."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pneumo.cli.sections import (
    ci_text,
    print_comparison,
    print_flow,
    print_groups,
    print_threshold_rule,
    value_text,
)
from pneumo.data.verify import Report

SHOWN = ("acc", "sensitivity", "specificity", "precision", "npv", "f1")


def _boot(figure: dict[str, Any], draws: int) -> str:
    """A bootstrap interval, with its usable draws where the figure was undefined in some."""
    usable = figure.get("bootstrap_draws", draws)
    return ci_text(figure.get("bootstrap")) + (f" ({usable}/{draws} draws)" if usable < draws else "")


def print_table(metrics: dict[str, Any]) -> None:
    """Console summary: the figures with their intervals at both thresholds, where the threshold
    came from, the flow of films, calibration, groups, a comparison and the errors."""
    console = Console()
    intervals = metrics.get("intervals")
    if not intervals:  # metrics of an earlier pneumo: the figures alone
        intervals = {"at_threshold": {"figures": {}}, "at_0.5": {"figures": {}}, "auroc": {}}
    boot = intervals.get("bootstrap")
    patients = f" of {boot['patients']} patients" if boot else ""
    draws = boot["draws"] if boot else 0
    table = Table(
        title=f"{metrics['split']}: {metrics['n']} films{patients}, AUROC {metrics['auroc']:.4f} "
        f"({_boot(intervals['auroc'], draws)})",
        caption="0.5 is exploratory: the stored threshold is the operating point",
    )
    # the stored threshold is the operating point; 0.5 is shown for comparison only
    table.add_column("figure")
    table.add_column(f"at {metrics['threshold']:.3f}\n(stored)", justify="right")
    table.add_column("Wilson", justify="right")
    table.add_column("patient\nbootstrap", justify="right")
    table.add_column("at 0.5\n(explor.)", justify="right")
    table.add_column("patient\nbootstrap", justify="right")
    stored, half = intervals["at_threshold"]["figures"], intervals["at_0.5"]["figures"]
    for key in SHOWN:
        table.add_row(
            key,
            value_text(metrics.get(key, math.nan)),
            ci_text(stored.get(key, {}).get("wilson")),
            _boot(stored.get(key, {}), draws),
            value_text(metrics["at_0.5"].get(key, math.nan)),
            _boot(half.get(key, {}), draws),
        )
    console.print(table)
    if boot:
        console.print(
            f"{boot['level']:.0%} intervals: Wilson (films as independent; none for F1); percentile "
            f"bootstrap of patients within each class ({boot['draws']} draws, seed {boot['seed']})",
            highlight=False,
        )
    if "threshold_rule" in metrics:
        print_threshold_rule(console, metrics["threshold_rule"])
    if "flow" in metrics:
        print_flow(console, metrics["flow"])
    for method, cuts in metrics["threshold_spread"].items():
        console.print(
            f"threshold by {method} on resampled films: {cuts['p05']:.3f} to {cuts['p95']:.3f} "
            f"(5th to 95th percentile, median {cuts['p50']:.3f})",
            highlight=False,
        )
    calibration = metrics["calibration"]
    before, after = calibration["before"], calibration["after"]
    console.print(
        f"calibration (temperature {calibration['temperature']:.3f}): ECE {before['ece']:.4f} -> "
        f"{after['ece']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f}, slope "
        f"{before['calibration_slope']:.2f} -> {after['calibration_slope']:.2f} (network -> served)",
        highlight=False,
    )
    if metrics["groups"]:
        print_groups(metrics["groups"], metrics["threshold"])
    if metrics.get("comparison"):
        print_comparison(console, metrics["comparison"])
    if "errors" in metrics:
        errors = metrics["errors"]
        cams = f"; Grad-CAM overlays in {errors['cam']}" if errors.get("cam") else ""
        console.print(
            f"errors.csv: {errors['false_positives']} false positives, {errors['false_negatives']} false "
            f"negatives, worst first{cams}; model_card.md; decision_curve.png (exploratory)",
            highlight=False,
        )


# Ignored files and names without a patient ID are listed up to this many; --json has all.
EXAMPLES_SHOWN = 10


def print_report(report: Report) -> None:
    """The verification as tables and short lists for a person."""
    console = Console(soft_wrap=True)
    table = Table(title=f"images in {report.root}")
    labels = sorted({label for counts in report.counts.values() for label in counts})
    table.add_column("split")
    for label in labels:
        table.add_column(label, justify="right")
    for split, counts in report.counts.items():
        table.add_row(split, *(str(counts.get(label, 0)) for label in labels))
    console.print(table)
    sizes = ", ".join(f"{size} ({n})" for size, n in list(report.sizes.items())[:5])
    console.print(f"sizes: {sizes}{' ...' if len(report.sizes) > 5 else ''}")
    console.print(f"modes: {', '.join(f'{m} ({n})' for m, n in report.modes.items())}")
    console.print(f"patients (from {report.patient_source}): {report.patients}", highlight=False)
    if report.dropped_rows:
        console.print(f"rows left out by the label map: {report.dropped_rows}", highlight=False)
    for name in report.unknown_patient_names[:EXAMPLES_SHOWN]:
        console.print(f"[yellow]no patient ID in name[/yellow] {name}", highlight=False)
    for path in report.ignored_files[:EXAMPLES_SHOWN]:
        console.print(f"[yellow]ignored[/yellow] {path}", highlight=False)
    for problem in report.folder_errors + report.manifest_errors:
        console.print(f"[red]{escape(problem)}[/red]", highlight=False)
    for bad in report.bad_files:
        console.print(f"[red]unreadable[/red] {bad['path']}: {bad['reason']}", markup=True, highlight=False)
    for group in report.duplicates_across:
        console.print(f"[red]duplicate across splits[/red] {' = '.join(group)}", highlight=False)
    for patient, splits in report.patients_across.items():
        console.print(f"[red]patient in several splits[/red] {patient}: {', '.join(splits)}", highlight=False)
    for group in report.duplicates_within[:EXAMPLES_SHOWN]:
        console.print(f"[yellow]duplicate[/yellow] {' = '.join(group)}", highlight=False)
    for message in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {message}")
    for message in report.errors:
        console.print(f"[red]error:[/red] {message}")
    console.print("[green]ok[/green]" if not report.errors else "[red]not safe to train on[/red]")
