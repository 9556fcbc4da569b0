"""pneumo-data: verify a dataset folder or manifest, fetch and lay out a source, or import a table.

pneumo-data verify DATA_ROOT|MANIFEST.csv [--classes NORMAL,PNEUMONIA] [--columns K=NAME,...]
                   [--labels VALUE=CLASS,...] [--json]
pneumo-data download --source kaggle|medmnist --to DIR [--size 128]
pneumo-data convert PNEUMONIAMNIST.npz --to DIR
pneumo-data import --format nih|rsna|chexpert TABLE.csv --to MANIFEST.csv [--images DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pneumo.cli.arguments import (
    ArgumentParser,
    comma_list,
    input_path,
    key_values,
    non_empty,
    output_file,
    output_folder,
)
from pneumo.cli.tables import print_report
from pneumo.data.dataset import DEFAULT_CLASSES
from pneumo.data.importers import FORMATS, TABLES, ImportRules, ImportSummary, import_table
from pneumo.data.sources import MEDMNIST_SIZES, convert_medmnist_npz, download_kaggle, download_medmnist
from pneumo.data.verify import verify, verify_source
from pneumo.errors import PneumoError, exit_on_user_error

# ``--classes NORMAL,PNEUMONIA`` as a list of folder names; ``--columns path=file,split=fold`` and
# ``--labels 1=PNEUMONIA,-1=null`` as mappings (the flag types of pneumo.cli.arguments)
class_list, settings = comma_list, key_values


def print_import(summary: ImportSummary, to: str) -> None:
    """One line per outcome of an import: what was written, what the rules left out."""
    written = ", ".join(f"{label} {n}" for label, n in sorted(summary.written.items()))
    print(f"wrote {sum(summary.written.values())} films to {to} ({written or 'none'})")
    for rule, n in sorted(summary.dropped.items()):
        print(f"left out {n}: {rule}")


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Command line of pneumo-data."""
    parser = ArgumentParser(
        prog="pneumo-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="report counts, bad files, duplicates and patient leaks")
    check.add_argument(
        "root", type=non_empty, help="DATA_ROOT with train/ (val/, test/) or class folders, or a CSV manifest"
    )
    check.add_argument(
        "--classes",
        type=class_list,
        default=list(DEFAULT_CLASSES),
        metavar="A,B",
        help=f"the class folder names, as data.classes (default: {','.join(DEFAULT_CLASSES)})",
    )
    check.add_argument(
        "--columns",
        type=settings,
        metavar="K=NAME,...",
        help="a manifest's column names, as data.manifest.columns (path, label, patient, split; null: none)",
    )
    check.add_argument(
        "--labels",
        type=settings,
        metavar="VALUE=CLASS,...",
        help="a manifest's label map, as data.manifest.labels (CLASS null: drop the row)",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    fetch = commands.add_parser("download", help="fetch a source and lay it out as DIR/split/class")
    fetch.add_argument("--source", choices=["kaggle", "medmnist"], required=True)
    fetch.add_argument("--to", required=True, type=output_folder, metavar="DIR")
    fetch.add_argument("--size", type=int, default=128, choices=MEDMNIST_SIZES, help="PneumoniaMNIST size")
    convert = commands.add_parser("convert", help="lay out a MedMNIST .npz as DIR/split/class PNGs")
    convert.add_argument("npz", type=input_path)
    convert.add_argument("--to", required=True, type=output_folder, metavar="DIR")
    table = commands.add_parser("import", help="write a manifest from an NIH, RSNA or CheXpert table")
    table.add_argument(
        "table",
        type=input_path,
        help="the set's table: " + ", ".join(f"{f} {t}" for f, t in TABLES.items()),
    )
    table.add_argument("--format", choices=FORMATS, required=True)
    table.add_argument(
        "--to",
        required=True,
        type=output_file(".csv"),
        metavar="MANIFEST",
        help="the manifest to write (CSV)",
    )
    table.add_argument(
        "--images",
        type=input_path,
        metavar="DIR",
        help="the folder of the films (default: nih the table's folder, rsna stage_2_train_images/ "
        "beside it, chexpert the folder above it)",
    )
    for name, (fmt, choices) in ImportRules.CHOICES.items():
        default = getattr(ImportRules(), name)
        table.add_argument(
            "--" + name.replace("_", "-"), choices=choices, help=f"{fmt} only (default: {default})"
        )
    args = parser.parse_args(argv)

    if args.command == "verify":
        source = verify_source(args.root, args.columns, args.labels)
        if isinstance(source, str) and (args.columns is not None or args.labels is not None):
            raise PneumoError(f"--columns and --labels read a manifest; {args.root} is not a file")
        report = verify(source, args.classes)
        if args.json:
            print(json.dumps(report.as_dict(), indent=2))
        else:
            print_report(report)
        raise SystemExit(1 if report.errors else 0)
    if args.command == "import":
        given = {name: getattr(args, name) for name in ImportRules.CHOICES}
        rules = ImportRules.for_format(args.format, **given)
        print_import(import_table(args.format, args.table, args.to, args.images, rules), args.to)
        return
    if args.command == "download":
        written = (
            download_kaggle(args.to) if args.source == "kaggle" else download_medmnist(args.to, args.size)
        )
    else:
        written = convert_medmnist_npz(args.npz, args.to)
    print(f"wrote {', '.join(f'{n} {split}' for split, n in written.items())} images to {args.to}")


if __name__ == "__main__":
    main(sys.argv[1:])
