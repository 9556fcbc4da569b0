"""pneumo-recalibrate: a checkpoint's temperature and threshold fitted again on a site's own films.

    pneumo-recalibrate --ckpt RUN/checkpoints/best.ckpt --data SITE_DIR --out site.ckpt

SITE_DIR holds one folder per class (SITE_DIR/NORMAL, SITE_DIR/PNEUMONIA) of the site's labelled
films. The temperature is fitted on them and the threshold chosen by the checkpoint's own rule
(model.threshold_method); the network is unchanged. The new checkpoint records where its
operating point came from (folder, films and patients a class, rule, sensitivity and specificity
with Wilson intervals) and is used like any other by pneumo-eval, pneumo-predict and
pneumo-export; the original is left untouched. At least 20 patients of each class are needed
(patients are read from the file names; other names count one patient a film).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pneumo import DISCLAIMER
from pneumo.cli.arguments import ArgumentParser, input_path, output_file
from pneumo.errors import exit_on_user_error
from pneumo.evaluation.recalibrate import recalibrate


def _figure(row: dict) -> str:
    low, high = row["wilson"]
    return f"{row['estimate']:.3f} ({row['k']} of {row['n']}; Wilson 95 % {low:.3f} to {high:.3f})"


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Command line of pneumo-recalibrate."""
    parser = ArgumentParser(
        prog="pneumo-recalibrate",
        description=__doc__,
        epilog=DISCLAIMER,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", type=input_path, required=True, help="the checkpoint to recalibrate")
    parser.add_argument("--data", type=input_path, required=True, help="the site's films: DATA/CLASS/*")
    parser.add_argument("--out", type=output_file(), required=True, help="the new checkpoint to write")
    args = parser.parse_args(argv)
    record = recalibrate(args.ckpt, args.data, args.out)
    patients = ", ".join(f"{n} {name}" for name, n in record["patients_by_class"].items())
    print(f"{record['films']} films of {patients} patients, rule {record['rule']['threshold_method']}")
    for when in ("before", "after"):
        point = record[when]
        print(
            f"{when}: temperature {record['temperature'][when]:.3f}, "
            f"threshold {record['threshold'][when]:.4f}, "
            f"sensitivity {_figure(point['sensitivity'])}, specificity {_figure(point['specificity'])}"
        )
    print(f"wrote {args.out} (the operating point was chosen on these films: figures after are optimistic)")


if __name__ == "__main__":
    main(sys.argv[1:])
