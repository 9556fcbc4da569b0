"""How long pneumo-eval's patient bootstrap takes on a test split's size: prints the seconds.

    python scripts/bootstrap_benchmark.py [--films 624] [--draws 2000]

Synthetic films of Kermany's test split's make-up (37.5 % normal, children with 1 to 3 films):
the draws, every figure with its interval at two thresholds, and AUROC with its interval, as
pneumo-eval computes them. The machine's speed varies: compare figures from one run only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pneumo.evaluation.statistics import PatientBootstrap, auroc_with_interval, figures_with_intervals


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--films", type=int, default=624)
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    normal = round(args.films * 234 / 624)
    truth = np.r_[np.zeros(normal, int), np.ones(args.films - normal, int)]
    probs = np.clip(rng.normal(0.3 + 0.4 * truth, 0.2), 0, 1)
    patients = [f"p{i // (1 + i % 3)}-{t}" for i, t in enumerate(truth)]
    start = time.perf_counter()
    boot = PatientBootstrap.draw(patients, truth, draws=args.draws, seed=0)
    figures_with_intervals(probs, truth, 0.5, boot)
    figures_with_intervals(probs, truth, 0.42, boot)
    auroc_with_interval(probs, truth, boot)
    seconds = time.perf_counter() - start
    print(
        f"{args.films} films, {args.draws} patient draws, figures at two thresholds and AUROC: "
        f"{seconds:.2f} s"
    )


if __name__ == "__main__":
    main()
