"""The parts of pneumo-eval's console report below its table of figures: where the threshold
came from, the flow of films, per-group figures and a comparison of two models. Only printing."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table


def ci_text(bounds: list[float] | None) -> str:
    """An interval as ``low-high``; ``-`` where there is none."""
    if not bounds or any(math.isnan(b) for b in bounds):
        return "-"
    return f"{bounds[0]:.3f}-{bounds[1]:.3f}"


def value_text(value: float) -> str:
    """A figure to 4 places; ``-`` for NaN."""
    return "-" if math.isnan(value) else f"{value:.4f}"


def print_threshold_rule(console: Console, rule: dict[str, Any]) -> None:
    """Where the stored threshold came from, in one or two lines."""
    parameters = ", ".join(f"{k}={v}" for k, v in rule["parameters"].items())
    console.print(
        f"threshold {rule['value']:.4f}: model.threshold_method={rule['rule']}"
        f"{' (' + parameters + ')' if parameters else ''}"
        f"{'' if rule['rule_recorded'] else ' (not in the config: the default)'}, {rule['where']}; "
        "figures at 0.5 are exploratory",
        highlight=False,
    )


def print_flow(console: Console, flow: dict[str, Any]) -> None:
    """From the split's files to the films counted, and the overlap warnings."""
    found, evaluated = flow["found"], flow["evaluated"]
    per_class = ", ".join(f"{n} {name}" for name, n in found["by_class"].items())
    kept = "; ".join(
        f"{name} {row['films']} films / {row['patients']} patients"
        for name, row in evaluated["by_class"].items()
    )
    console.print(
        f"films: {found['films']} found ({per_class}), {len(flow['skipped_files'])} non-image files "
        f"skipped, {len(flow['left_out'])} left out unreadable; evaluated {evaluated['films']} films of "
        f"{evaluated['patients']} patients ({kept})",
        highlight=False,
    )
    for film in flow["left_out"][:5]:
        console.print(f"  left out {film['path']} ({film['class']}): {film['reason']}", highlight=False)
    if len(flow["left_out"]) > 5:
        console.print(f"  ... and {len(flow['left_out']) - 5} more (metrics.json, flow.left_out)")
    training = flow["overlap"]["training"]
    if training["checked"]:
        console.print(
            f"training patients among these: {training['patients']} (of {training['training_patients']} "
            f"training patients, checked on the rebuilt training files)",
            highlight=False,
        )
    for warning in flow["warnings"]:
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)


def print_groups(groups: dict[str, dict[str, Any]], threshold: float) -> None:
    """One row per acquisition group at the stored threshold; a figure with nothing to count is '-'."""

    def shown(value: float, count: int, bounds: list[float] | None) -> str:
        if math.isnan(value):
            return "-"
        return f"{value:.4f} ({count})" + (f"\n{ci_text(bounds)}" if bounds is not None else "")

    table = Table(title=f"by acquisition group, at threshold {threshold:.3f} (bootstrap 95 % below)")
    table.add_column("group")
    for name in ("films", "neg/pos", "specificity\n(FP)", "sensitivity\n(missed)", "AUROC"):
        table.add_column(name, justify="right")
    for group, row in groups.items():
        extra = row.get("intervals", {})
        table.add_row(
            group,
            str(row["n"]),
            f"{row['n_negative']} / {row['n_positive']}",
            shown(row["specificity"], row["false_positives"], extra.get("specificity", {}).get("bootstrap")),
            shown(row["sensitivity"], row["false_negatives"], extra.get("sensitivity", {}).get("bootstrap")),
            "-" if math.isnan(row["auroc"]) else f"{row['auroc']:.4f}",
        )
    Console().print(table)


def print_comparison(console: Console, comparison: dict[str, Any]) -> None:
    """Model A (ckpt_path) against model B (compare_ckpt_path) on the same films."""
    auroc = comparison["auroc"]
    console.print(
        f"A = {comparison['a']['checkpoint']}\nB = {comparison['b']['checkpoint']}\n"
        f"on the same {comparison['films']} films ({comparison['patients']} patients): AUROC A "
        f"{auroc['auroc_a']:.4f}, B {auroc['auroc_b']:.4f}, A - B {auroc['difference']:+.4f} "
        f"(paired patient bootstrap {ci_text(auroc['bootstrap'])})",
        highlight=False,
    )
    for figure, verb in (("sensitivity", "found"), ("specificity", "cleared")):
        row = comparison[figure]
        console.print(
            f"{figure} A {value_text(row['a'])}, B {value_text(row['b'])}: "
            f"{row['a_only']} films only A {verb}, "
            f"{row['b_only']} only B; exact McNemar p = {row['p_value']:.4f}",
            highlight=False,
        )
