"""pneumo-export: a checkpoint to ONNX or TorchScript, checked against PyTorch.

    pneumo-export --ckpt RUN/checkpoints/best.ckpt --format onnx --out exported/

The exported model takes ``input_0`` (N x 3 x H x W float, ImageNet-normalised, see
preprocessing.json) and returns ``output_0`` (N x 2 class probabilities, softmax
included): the layout jetson-inference's imagenet tools load.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pneumo.cli.arguments import ArgumentParser, non_empty, output_folder
from pneumo.data.dataset import list_films, summarize_ignored
from pneumo.errors import PneumoError, exit_on_user_error
from pneumo.serving.export import TOLERANCE, WRITERS, export

DEFAULT_CHECK_IMAGES = Path("data/sample")


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Command line of pneumo-export."""
    parser = ArgumentParser(
        prog="pneumo-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, type=non_empty, help="checkpoint written by pneumo-train")
    parser.add_argument("--format", choices=sorted(WRITERS), default="onnx")
    parser.add_argument(
        "--out", type=output_folder, default=Path("exported"), help="output folder (default: exported/)"
    )
    parser.add_argument(
        "--images",
        nargs="*",
        type=non_empty,
        default=None,
        help=f"images to compare the export on (default: {DEFAULT_CHECK_IMAGES}/ when present)",
    )
    args = parser.parse_args(argv)
    sources = args.images
    if sources is None:
        sources = [DEFAULT_CHECK_IMAGES] if DEFAULT_CHECK_IMAGES.is_dir() else []
    listing = list_films(sources)
    if listing.refused:  # named on their own: the user meant them
        raise PneumoError(f"--images: {summarize_ignored(listing.refused)}; give films pneumo reads")
    if listing.ignored and args.images is not None:
        print(f"not used for the check: {summarize_ignored(listing.ignored)}", file=sys.stderr)
    images = listing.files[:16]
    path, difference = export(args.ckpt, args.format, args.out, images)
    on = f"{len(images)} images" if images else "4 random inputs (no images found)"
    print(f"wrote {path}, labels.txt, preprocessing.json in {Path(args.out)}")
    print(f"max |p_{args.format} - p_pytorch| on {on}: {difference:.2e} (limit {TOLERANCE:.0e})")


if __name__ == "__main__":
    main(sys.argv[1:])
