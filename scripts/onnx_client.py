"""Classify chest X-rays with an exported pneumo model, using numpy, PIL and onnxruntime only.

    python scripts/onnx_client.py exported/resnet18.onnx data/sample            # a line per film
    python scripts/onnx_client.py exported/resnet18.onnx data/sample --json

A deployment client written from ``preprocessing.json`` (beside the model) alone, step by
step, without pneumo or PyTorch: its probabilities match pneumo-predict's. JPEG, PNG (8- and
16-bit), BMP and TIFF; DICOM (see the file's ``decode.dicom``) needs pydicom and is left out.

``--resize-filter NEAREST --no-draft`` imitates a client that decodes at full size and resizes
by nearest neighbour (as jetson-inference does), to measure what that costs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, ImageOps

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
SUPPORTED_RULE = "p >= threshold"


def find_images(paths: list[str]) -> list[Path]:
    """Files as given; folders searched recursively, in sorted order, hidden files left out."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")
            )
        else:
            found.append(path)
    return found


def grey(path: Path, spec: dict, draft: bool = True) -> Image.Image:
    """Decode to 8-bit grey: the ``decode`` and ``grey`` steps."""
    image = Image.open(path)
    if draft:
        jpeg = spec["decode"]["jpeg_draft"]
        image.draft(jpeg["mode"], tuple(jpeg["size"]))
    image.load()
    image = ImageOps.exif_transpose(image)  # decode.exif_orientation
    if image.mode in spec["grey"]["16_bit"]["modes"]:
        x = np.asarray(image, dtype=np.float32)
        low, high = float(x.min()), float(x.max())
        scale = np.float32(255.0 / (high - low) if high > low else 0.0)
        return Image.fromarray(((x - np.float32(low)) * scale).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA").convert("RGB")
    return image.convert("L")


def model_input(path: Path, spec: dict, resize_filter: str | None = None, draft: bool = True) -> np.ndarray:
    """One ``3 x H x W`` float32 input: the ``resize``, ``scale``, ``channels`` and ``normalize`` steps."""
    resize = spec["resize"]
    method = getattr(Image.Resampling, resize_filter or resize["filter"])
    small = grey(path, spec, draft).resize(tuple(resize["size"]), method)
    x = np.asarray(small, dtype=np.float32) / np.float32(spec["scale"]["divide_by"])
    x = np.repeat(x[None], 3, axis=0)
    mean = np.asarray(spec["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(spec["std"], dtype=np.float32)[:, None, None]
    return (x - mean) / std


def classify(
    model_path: Path, files: list[Path], resize_filter: str | None = None, draft: bool = True
) -> list[dict]:
    """``{path, label, p_positive, positive_class}`` for every file (and ``p_pneumonia`` where the
    positive class is PNEUMONIA), by the model's threshold and rule."""
    spec = json.loads((model_path.parent / "preprocessing.json").read_text())
    rule = spec.get("positive_if")
    if rule != SUPPORTED_RULE:
        raise SystemExit(
            f"{model_path.parent / 'preprocessing.json'}: this client applies {SUPPORTED_RULE!r}, the file "
            f"asks for {rule!r}; re-export the model with the current pneumo-export"
        )
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    column = spec["classes"].index(spec.get("positive_class", spec["classes"][1]))
    rows = []
    for start in range(0, len(files), 16):
        chunk = files[start : start + 16]
        batch = np.stack([model_input(p, spec, resize_filter, draft) for p in chunk])
        probs = session.run([spec["output"]], {spec["input"]: batch})[0]
        for path, p in zip(chunk, probs[:, column].tolist()):
            label = spec["classes"][column] if p >= spec["threshold"] else spec["classes"][1 - column]
            row = {
                "path": str(path),
                "label": label,
                "p_positive": p,
                "positive_class": spec["classes"][column],
            }
            if row["positive_class"] == "PNEUMONIA":
                row["p_pneumonia"] = p
            rows.append(row)
    return rows


def main() -> None:
    """Command line: print a line per film, or JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="the exported .onnx file, with preprocessing.json beside it")
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    parser.add_argument("--resize-filter", default=None, help="a PIL filter name instead of the file's")
    parser.add_argument("--no-draft", action="store_true", help="decode JPEGs at full size")
    args = parser.parse_args()
    rows = classify(args.model, find_images(args.paths), args.resize_filter, not args.no_draft)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['label']:<10} {row['p_positive']:.4f}  {row['path']}")


if __name__ == "__main__":
    main()
