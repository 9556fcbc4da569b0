"""pneumo-jetson-train: training with NVIDIA jetson-inference's classification command line.

    pneumo-jetson-train --model-dir=models/NAME DATA_DIR --epochs=35 --batch-size=8 --workers=2
    python scripts/train.py ...      (the same, under the original script's name)

The flags become pneumo-train overrides; the run lands in the model directory, which then
also holds what jetson-inference's tools expect: model_best.pth.tar (torchvision ResNet18
weights with arch, resolution and num_classes), labels.txt (one class per line, in the
model's order) and resnet18.onnx. Extra ``key=value`` arguments are passed to Hydra as-is,
e.g. ``model.weights=/path/resnet18-f37072fd.pth``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumo.cli.arguments import (
    ArgumentParser,
    image_size,
    non_empty,
    non_negative_int,
    output_folder,
    positive_float,
    positive_int,
)
from pneumo.cli.overrides import hydra_quote
from pneumo.errors import exit_on_user_error
from pneumo.serving.jetson import write_model_dir


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse jetson-inference style flags; return them and any Hydra overrides."""
    parser = ArgumentParser(
        prog="pneumo-jetson-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "data",
        type=non_empty,
        metavar="DATA_DIR",
        help="dataset root: DATA_DIR/train/NORMAL, DATA_DIR/train/PNEUMONIA, ...",
    )
    parser.add_argument(
        "--model-dir",
        type=output_folder,
        default=Path("models"),
        help="where the run, weights, labels.txt and ONNX go",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=35,
        help="maximum number of epochs (early stopping may end sooner)",
    )
    parser.add_argument("-b", "--batch-size", type=positive_int, default=8, help="films per batch")
    parser.add_argument(
        "-j", "--workers", type=non_negative_int, default=2, help="data loader worker processes (0 or more)"
    )
    parser.add_argument(
        "--lr",
        "--learning-rate",
        type=positive_float,
        default=None,
        help="AdamW learning rate (default: conf/model)",
    )
    parser.add_argument(
        "--resolution", type=image_size, default=224, help="input images are resized to this square size"
    )
    parser.add_argument(
        "--resume",
        type=non_empty,
        default=None,
        metavar="CKPT",
        help="resume from a pneumo checkpoint (e.g. MODEL_DIR/checkpoints/last.ckpt)",
    )
    parser.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start from ImageNet weights (--no-pretrained: scratch)",
    )
    parser.add_argument(
        "--arch", "-a", default="resnet18", choices=["resnet18"], help="network (only resnet18)"
    )
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    return args, extra


def overrides_for(args: argparse.Namespace) -> list[str]:
    """The pneumo-train overrides equivalent to the jetson-inference flags.

    Paths are quoted for Hydra here (``hydra_quote``): any path the shell passed arrives as it
    is, spaces, commas, ``=``, quotes and all, without the user quoting it a second time.
    """
    overrides = [
        f"data.root={hydra_quote(args.data)}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        f"data.image_size={args.resolution}",
        f"trainer.max_epochs={args.epochs}",
        f"hydra.run.dir={hydra_quote(args.model_dir)}",
    ]
    if args.lr is not None:
        overrides.append(f"model.optimizer.lr={args.lr!r}")
    if not args.pretrained:
        overrides.append("model.weights=null")
    if args.resume:
        overrides.append(f"ckpt_path={hydra_quote(args.resume)}")
    return overrides


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Train through pneumo-train, then lay out the model directory jetson-inference expects."""
    from pneumo.cli.train import main as train_main

    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    sys.argv = ["pneumo-train", *overrides_for(args), *extra]
    train_main()
    model_dir = Path(args.model_dir)
    for path in write_model_dir(model_dir / "checkpoints" / "best.ckpt", model_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
