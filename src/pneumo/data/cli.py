"""pneumo-data: verify a dataset folder, or fetch and lay out a source.

pneumo-data verify DATA_ROOT [--classes NORMAL,PNEUMONIA] [--json]
pneumo-data download --source kaggle|medmnist --to DIR [--size 128]
pneumo-data convert PNEUMONIAMNIST.npz --to DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pneumo.data.dataset import DEFAULT_CLASSES
from pneumo.data.sources import MEDMNIST_SIZES, convert_medmnist_npz, download_kaggle, download_medmnist
from pneumo.data.verify import Report, verify
from pneumo.errors import PneumoError, exit_on_user_error

# Ignored files and names without a patient ID are listed up to this many; --json has all.
SHOWN = 10


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
    console.print(f"patients (from file names): {report.patients}", highlight=False)
    for name in report.unknown_patient_names[:SHOWN]:
        console.print(f"[yellow]no patient ID in name[/yellow] {name}", highlight=False)
    for path in report.ignored_files[:SHOWN]:
        console.print(f"[yellow]ignored[/yellow] {path}", highlight=False)
    for problem in report.folder_errors:
        console.print(f"[red]{escape(problem)}[/red]", highlight=False)
    for bad in report.bad_files:
        console.print(f"[red]unreadable[/red] {bad['path']}: {bad['reason']}", markup=True, highlight=False)
    for group in report.duplicates_across:
        console.print(f"[red]duplicate across splits[/red] {' = '.join(group)}", highlight=False)
    for patient, splits in report.patients_across.items():
        console.print(f"[red]patient in several splits[/red] {patient}: {', '.join(splits)}", highlight=False)
    for group in report.duplicates_within[:SHOWN]:
        console.print(f"[yellow]duplicate[/yellow] {' = '.join(group)}", highlight=False)
    for message in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {message}")
    for message in report.errors:
        console.print(f"[red]error:[/red] {message}")
    console.print("[green]ok[/green]" if not report.errors else "[red]not safe to train on[/red]")


def class_list(text: str) -> list[str]:
    """``--classes NORMAL,PNEUMONIA`` as a list of folder names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if len(names) != len(set(names)) or not names:
        raise PneumoError(f"--classes {text!r}: give distinct class folder names, comma-separated")
    return names


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Command line of pneumo-data."""
    parser = argparse.ArgumentParser(
        prog="pneumo-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="report counts, bad files, duplicates and patient leaks")
    check.add_argument("root", help="DATA_ROOT with train/ (val/, test/) or class folders")
    check.add_argument(
        "--classes",
        type=class_list,
        default=list(DEFAULT_CLASSES),
        metavar="A,B",
        help=f"the class folder names, as data.classes (default: {','.join(DEFAULT_CLASSES)})",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    fetch = commands.add_parser("download", help="fetch a source and lay it out as DIR/split/class")
    fetch.add_argument("--source", choices=["kaggle", "medmnist"], required=True)
    fetch.add_argument("--to", required=True, metavar="DIR")
    fetch.add_argument("--size", type=int, default=128, choices=MEDMNIST_SIZES, help="PneumoniaMNIST size")
    convert = commands.add_parser("convert", help="lay out a MedMNIST .npz as DIR/split/class PNGs")
    convert.add_argument("npz")
    convert.add_argument("--to", required=True, metavar="DIR")
    args = parser.parse_args(argv)

    if args.command == "verify":
        report = verify(args.root, args.classes)
        if args.json:
            print(json.dumps(report.as_dict(), indent=2))
        else:
            print_report(report)
        raise SystemExit(1 if report.errors else 0)
    if args.command == "download":
        written = (
            download_kaggle(args.to) if args.source == "kaggle" else download_medmnist(args.to, args.size)
        )
    else:
        written = convert_medmnist_npz(args.npz, args.to)
    print(f"wrote {', '.join(f'{n} {split}' for split, n in written.items())} images to {args.to}")


if __name__ == "__main__":
    main(sys.argv[1:])
