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
from pneumo.errors import PneumoError, exit_on_user_error, printable
from pneumo.model.inference import Prediction, collect_images, predict
from pneumo.model.loading import load_model


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


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Command line of pneumo-predict; exits 1 when some files could not be read."""
    parser = argparse.ArgumentParser(
        prog="pneumo-predict",
        description=__doc__,
        epilog=DISCLAIMER,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by pneumo-train")
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="write .csv or .json instead of printing a table"
    )
    parser.add_argument("--cam", type=Path, default=None, metavar="DIR", help="write Grad-CAM overlays here")
    parser.add_argument("--threshold", type=float, default=None, help="override the checkpoint's threshold")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--tta",
        action="store_true",
        help="average over fixed zooms, rotations and shifts (6x the time; see README)",
    )
    args = parser.parse_args(argv)
    model = load_model(args.ckpt)
    if args.cam is not None:
        from pneumo.model.cam import refuse_ensemble

        refuse_ensemble(model)  # before predicting: a refused --cam costs nothing
    print(DISCLAIMER, file=sys.stderr)
    files = collect_images(args.paths)
    if not files:
        raise PneumoError(f"no images found in {' '.join(args.paths)}")
    rows = predict(
        model, files, args.batch_size, args.threshold, progress=len(files) > args.batch_size, tta=args.tta
    )
    write_predictions(rows, args.out)
    if args.cam is not None:
        from pneumo.model.cam import write_cams

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
