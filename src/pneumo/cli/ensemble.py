"""pneumo-ensemble: several trained models averaged into one checkpoint.

    pneumo-ensemble outputs/kermany_cpu/multiruns/DATE --out ensemble.ckpt
    pneumo-ensemble runA/checkpoints/best.ckpt runB/ runC/ --out ensemble.ckpt --data-root DATA

Each argument is a checkpoint, a run directory (its checkpoints/best.ckpt) or a sweep
directory (the checkpoints/best.ckpt of every run in it); at least two members in all. They
must share classes, positive class, preprocessing, validation films and threshold rule: train
them alike but for the seed, e.g. pneumo-train -m experiment=kermany_cpu seed=1,2,3
(or train and average in one command: pneumo-train experiment=kermany_cpu ensemble=seeds).
The ensemble's threshold is chosen on those validation films (found under --data-root, by
default the data.root the first member was trained on) by the members' own rule, and the
figures of the ensemble and of each member on them are printed. The file is used like any
checkpoint by pneumo-eval, pneumo-predict and pneumo-export.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pneumo import DISCLAIMER
from pneumo.callbacks.ensemble_sweep import write_ensemble
from pneumo.cli.arguments import ArgumentParser, input_path, non_empty, output_file
from pneumo.errors import exit_on_user_error

log = logging.getLogger(__name__)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Command line of pneumo-ensemble."""
    parser = ArgumentParser(
        prog="pneumo-ensemble",
        description=__doc__,
        epilog=DISCLAIMER,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "members",
        nargs="+",
        type=non_empty,
        metavar="CKPT_OR_RUN_DIR",
        help="checkpoints, run directories or sweep directories (two members or more in all)",
    )
    parser.add_argument("--out", type=output_file(), required=True, help="the ensemble checkpoint to write")
    parser.add_argument(
        "--data-root",
        type=input_path,
        default=None,
        help="where the members' validation films lie (default: the data.root of the first member)",
    )
    args = parser.parse_args(argv)
    write_ensemble(args.members, args.out, args.data_root)


if __name__ == "__main__":
    main(sys.argv[1:])
