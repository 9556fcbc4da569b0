"""pneumo-search: an Optuna search over pneumo-train's settings, maximising validation AUROC.

pneumo-search data.root=data/chest_xray experiment=kermany_cpu         # hparams_search=default
pneumo-search data.root=data/chest_xray search.n_trials=40 search.dir=outputs/search/DATE   # resume

The search itself is a library (``pneumo.training.search``): every trial an ordinary
pneumo-train run in its own folder of the search's directory, the study in its ``study.db``.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from pneumo.cli.arguments import ArgumentParser
from pneumo.errors import exit_on_user_error
from pneumo.training.search import LOG_FORMAT, override_value, search, search_config

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def report(study: optuna.Study, cfg: DictConfig) -> None:
    """Log the count of trials by outcome, the best trial and where to look at all of them."""
    search_dir = Path(cfg.search.dir)
    counts = Counter(trial.state.name.lower() for trial in study.trials)
    log.info("search %s: %s", search_dir, ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    if counts["complete"]:
        best = study.best_trial
        run_dir = best.user_attrs["run_dir"]
        log.info("best: trial %d, %s %.4f, %s", best.number, cfg.optimized_metric, best.value, run_dir)
        log.info("its settings: %s", " ".join(f"{k}={override_value(v)}" for k, v in best.params.items()))
    log.info("compare: python scripts/compare_runs.py %s ; tensorboard --logdir %s", search_dir, search_dir)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """pneumo-search: parse the overrides, log to the console, run the search and report it."""
    parser = ArgumentParser(
        prog="pneumo-search",
        description=(
            "Optuna search over pneumo-train settings. It maximises validation AUROC: each trial "
            "is scored by its best epoch's val/auroc (optimized_metric=best/val/auroc, set with "
            "monitor by hparams_search=default), and trials trailing the median at an epoch are "
            "pruned. Space, sampler, pruner and n_trials: conf/hparams_search/default.yaml."
        ),
        epilog="e.g. pneumo-search data.root=data/chest_xray experiment=kermany_cpu search.n_trials=30",
    )
    parser.add_argument(
        "overrides", nargs="*", help="pneumo-train overrides and search.* keys (search.dir=DIR resumes DIR)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        cfg = search_config(args.overrides)  # composed once: the default search.dir holds the time
        report(search(args.overrides, cfg), cfg)
    except SystemExit as stopped:  # Lightning ends a trial on SIGTERM with status 0, on Ctrl-C with 1
        if stopped.code in (None, 0, 1):
            print(
                "error: pneumo-search was stopped (a signal) before its trials finished; the study keeps "
                "the finished ones: launch the same command with search.dir=THE_SEARCH'S_FOLDER to go on",
                file=sys.stderr,
            )
            raise SystemExit(143 if stopped.code in (None, 0) else 130) from None
        raise


if __name__ == "__main__":
    main()
