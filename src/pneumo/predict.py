"""pneumo-predict: classify X-ray files with a trained checkpoint, optionally with Grad-CAM.

    pneumo-predict --ckpt best.ckpt xrays/ one.jpeg --out preds.csv --cam heatmaps/

A research tool, not a medical device: predictions must not guide the care of a patient.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from pneumo.checkpoint import LoadedModel, load_model
from pneumo.data.dataset import is_image_file
from pneumo.data.preprocess import BadImageError, load_image, to_model_input
from pneumo.data.transforms import TTA_VIEWS, tta_views
from pneumo.errors import PneumoError, exit_on_user_error
from pneumo.threshold import is_positive


@dataclass
class Prediction:
    """One row of output: a file and what the model made of it (or why it could not)."""

    path: str
    label: str = ""
    p_pneumonia: float | None = None  # exact, unrounded: pneumo-eval counts from it
    threshold: float | None = None
    error: str = ""


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders (recursively) into image files; keep named files as given."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if is_image_file(p)))
        else:
            found.append(path)  # a bad or missing file becomes an error row, not a crash
    return found


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def p_pneumonia(model: LoadedModel, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """P(PNEUMONIA) for a ``N x 1 x H x W`` uint8 batch; with ``tta``, the mean over ``TTA_VIEWS``."""
    x = images.to(torch.float32).div_(255.0)
    if tta:
        x = tta_views(x)
    with torch.inference_mode():
        probs = model.net(to_model_input(x, model.mean, model.std)).softmax(dim=1)[:, 1]
    return probs.view(len(TTA_VIEWS), -1).mean(dim=0) if tta else probs


def predict(
    model: LoadedModel,
    files: Sequence[Path],
    batch_size: int = 16,
    threshold: float | None = None,
    progress: bool = False,
    tta: bool = False,
) -> list[Prediction]:
    """Classify ``files``; unreadable ones get a row with the reason instead of a label.

    ``tta`` averages P(PNEUMONIA) over fixed zooms, rotations and shifts (``TTA_VIEWS``),
    at six times the cost.
    """
    cut = model.threshold if threshold is None else threshold
    rows: list[Prediction] = []
    chunks = _batches(files, batch_size)
    if progress:
        chunks = track(list(chunks), description="predicting", transient=True, console=Console(stderr=True))
    for chunk in chunks:
        images, good = [], []
        for path in chunk:
            try:
                images.append(load_image(path, model.image_size))
                good.append(path)
            except BadImageError as err:
                rows.append(Prediction(str(path), error=str(err).removeprefix(f"{path}: ")))
        if not images:
            continue
        probs = p_pneumonia(model, torch.stack(images), tta)
        for path, p, positive in zip(good, probs.tolist(), is_positive(probs, cut).tolist()):
            rows.append(Prediction(str(path), model.classes[int(positive)], p, cut))
    order = {str(p): i for i, p in enumerate(files)}
    return sorted(rows, key=lambda r: order[r.path])


def write_predictions(rows: Sequence[Prediction], out: Path | None) -> None:
    """Write CSV or JSON by ``out``'s extension, or print a table when ``out`` is None."""
    if out is None:
        table = Table("file", "prediction", "P(pneumonia)", "threshold", "error")
        for r in rows:
            p = "" if r.p_pneumonia is None else f"{r.p_pneumonia:.3f}"
            t = "" if r.threshold is None else f"{r.threshold:.3f}"
            table.add_row(r.path, r.label, p, t, r.error)
        Console().print(table)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    elif out.suffix.lower() == ".csv":
        with out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(Prediction.__dataclass_fields__))
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)
    else:
        raise PneumoError(f"--out {out}: use a .csv or .json file name")


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Command line of pneumo-predict; exits 1 when some files could not be read."""
    parser = argparse.ArgumentParser(
        prog="pneumo-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    files = collect_images(args.paths)
    if not files:
        raise PneumoError(f"no images found in {' '.join(args.paths)}")
    rows = predict(
        model, files, args.batch_size, args.threshold, progress=len(files) > args.batch_size, tta=args.tta
    )
    write_predictions(rows, args.out)
    if args.cam is not None:
        from pneumo.cam import write_cams

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
