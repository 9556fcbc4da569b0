"""pneumo-predict: classify X-ray files with a trained checkpoint, optionally with Grad-CAM.

    pneumo-predict --ckpt best.ckpt xrays/ one.jpeg --out preds.csv --cam heatmaps/

Prints a table, or writes --out as .csv or .json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pneumo import DISCLAIMER
from pneumo.artifacts.output import write_text_atomically
from pneumo.cli.arguments import (
    ArgumentParser,
    non_empty,
    output_file,
    output_folder,
    positive_int,
    probability,
)
from pneumo.data.dataset import Sample, label_conflict_groups, list_films, summarize_ignored
from pneumo.errors import PneumoError, exit_on_user_error, printable
from pneumo.serving.inference import Prediction, predict
from pneumo.serving.loading import load_model


def write_predictions(rows: Sequence[Prediction], out: Path | None) -> None:
    """Write CSV or JSON by ``out``'s extension, or print a table when ``out`` is None."""
    if out is None:
        # the folder once, each file by its path below it, never cut: deep folders stay readable
        folder = os.path.commonpath([str(Path(r.path).parent) for r in rows]) if rows else ""
        table = Table(title=f"in {printable(folder)}" if folder else None)
        table.add_column("file", overflow="fold")
        for name in ("prediction", "P(positive)", "threshold", "error"):
            table.add_column(name, overflow="fold")
        for r in rows:
            p = "" if r.p_positive is None else f"{r.p_positive:.3f}"
            t = "" if r.threshold is None else f"{r.threshold:.3f}"
            name = os.path.relpath(r.path, folder) if folder else r.path
            table.add_row(printable(name), r.label, p, t, printable(r.error))
        Console().print(table)
        return
    if out.suffix.lower() == ".json":
        # JSON escapes a file name that is not valid UTF-8 (\\udcff); os.fsencode gives back its bytes
        write_text_atomically(out, json.dumps([r.as_row() for r in rows], indent=2) + "\n")
    elif out.suffix.lower() == ".csv":
        text = io.StringIO(newline="")
        records = [r.as_row() for r in rows]
        writer = csv.DictWriter(
            text, fieldnames=list(records[0]) if records else list(Prediction.__dataclass_fields__)
        )
        writer.writeheader()
        writer.writerows(records)
        write_text_atomically(out, text.getvalue())
    else:
        raise PneumoError(f"--out {out}: use a .csv or .json file name")


def report_inputs(files: Sequence[Path], ignored: dict[Path, str]) -> None:
    """Say on stderr, once each, what of the input is not predicted (ignored files, by reason,
    with examples) and which inputs are one film given twice (the same bytes under two paths)."""
    if ignored:
        print(f"not predicted: {summarize_ignored(ignored)}", file=sys.stderr)
    # the rule training and verify apply to class folders: the same bytes are one film
    groups = label_conflict_groups([Sample(path, index) for index, path in enumerate(files)])
    if groups:
        shown = "; ".join(" = ".join(printable(str(s.path)) for s in group) for group in groups[:3])
        more = f" and {len(groups) - 3} more" if len(groups) > 3 else ""
        print(
            f"warning: {len(groups)} films are given more than once (the same bytes under several "
            f"paths: {shown}{more}); each copy gets its own row",
            file=sys.stderr,
        )


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Command line of pneumo-predict; exits 1 when some files could not be read."""
    parser = ArgumentParser(
        prog="pneumo-predict",
        description=__doc__,
        epilog=DISCLAIMER,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, type=non_empty, help="checkpoint written by pneumo-train")
    parser.add_argument(
        "paths",
        nargs="+",
        type=non_empty,
        metavar="PATH",
        help="image files or folders (searched recursively)",
    )
    parser.add_argument(
        "--out",
        type=output_file(".csv", ".json"),
        default=None,
        help="write .csv or .json instead of printing a table",
    )
    parser.add_argument(
        "--cam", type=output_folder, default=None, metavar="DIR", help="write Grad-CAM overlays here"
    )
    parser.add_argument(
        "--threshold", type=probability, default=None, help="override the checkpoint's threshold (0 to 1)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="films per batch (1 or more)")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="average over fixed zooms, rotations and shifts (6x the time; see docs/evaluation.md)",
    )
    args = parser.parse_args(argv)
    model = load_model(args.ckpt)
    if args.cam is not None:
        from pneumo.serving.cam import refuse_ensemble

        refuse_ensemble(model)  # before predicting: a refused --cam costs nothing
    print(DISCLAIMER, file=sys.stderr)
    listing = list_films(args.paths)
    files = listing.files
    report_inputs(files, listing.ignored)
    if not files and not listing.refused:
        raise PneumoError(f"no images found in {' '.join(args.paths)}")
    rows = predict(
        model, files, args.batch_size, args.threshold, progress=len(files) > args.batch_size, tta=args.tta
    )
    for path, why in listing.refused.items():  # named alone, yet not a film: a row says why
        rows.append(Prediction(str(path), error=why, positive_class=model.meta.positive_class))
    write_predictions(rows, args.out)
    if args.cam is not None:
        from pneumo.serving.cam import write_cams

        write_cams(model, [Path(r.path) for r in rows if not r.error], args.cam)
        print(f"Grad-CAM overlays in {args.cam}", file=sys.stderr)
    failed = [r for r in rows if r.error]
    if args.out is not None:
        print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(rows)} files could not be read (see the error column)", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
