"""A k-fold cross-validation as one sweep (``cv=5fold``): each fold a job in ``SWEEP_DIR/fold_I``,
resumable fold by fold, and at the end (a Hydra callback) the out-of-fold figures and the fold
ensemble (``evaluation.cv.cross_validate``).

Launched again into the same sweep folder, a fold whose run finished (``best.ckpt`` and
``fold_finished.json``, written once its schedule ended) is not trained again, provided it was
trained with this launch's settings; a fold that was stopped resumes from its newest
checkpoint (``interrupted.ckpt`` or ``last.ckpt``), checked as any resume is
(``provenance.check_resume``: the same folds, fold and ``data.seed``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict
from rich.console import Console
from rich.table import Table

from pneumo.artifacts.checkpoint import read_checkpoint, read_meta
from pneumo.artifacts.output import atomic_path
from pneumo.artifacts.rundir import RESUMABLE
from pneumo.callbacks.ensemble_sweep import is_wiring_check
from pneumo.callbacks.run_outcome import RunOutcome
from pneumo.data.datamodule import XrayDataModule
from pneumo.data.provenance import files_fingerprint, fold_differences
from pneumo.errors import PneumoError, exit_with
from pneumo.evaluation.cv import CV_CKPT, CV_JSON, OOF_CSV, cross_validate
from pneumo.evaluation.statistics import FEW_PATIENTS
from pneumo.serving.ensemble import BEST
from pneumo.training.config import instantiate_node, plain

log = logging.getLogger(__name__)

FINISHED = "fold_finished.json"


def is_fold_job(cfg: DictConfig, multirun: bool) -> bool:
    """Whether a run is one fold of a cross-validation sweep (``data.folds`` set, under ``-m``)."""
    return multirun and cfg.data.get("folds") is not None


def finished_fold(cfg: DictConfig) -> dict[str, Any] | None:
    """What an earlier launch recorded when this fold's run finished, or None (train it).

    A finished fold trained with other settings than this launch's is refused in one line: its
    figures would not belong to this cross-validation."""
    run_dir = Path(cfg.paths.output_dir)
    marker, best = run_dir / FINISHED, run_dir / BEST
    if not (marker.is_file() and best.is_file()):
        return None
    saved = read_meta(read_checkpoint(best), best)
    differences = fold_differences(saved.config, plain(cfg))
    if differences:
        key, then, now = differences[0]
        raise PneumoError(
            f"{run_dir} holds fold {cfg.data.fold} of a cross-validation trained with {key}={then}, but this "
            f"launch has {key}={now}: launch the sweep with the settings it had, or into a new folder "
            "(hydra.sweep.dir=NEW)"
        )
    datamodule: XrayDataModule = instantiate_node(cfg.data)
    train, _ = datamodule.split_samples()
    listed = files_fingerprint(train, datamodule.root, datamodule.classes)
    if saved.train_files is not None and listed != saved.train_files:
        raise PneumoError(
            f"{run_dir} holds fold {cfg.data.fold} trained on {saved.train_files.get('count')} films, but "
            f"this launch lists another {listed['count']} for it (the data changed): launch the sweep into a "
            "new folder (hydra.sweep.dir=NEW)"
        )
    log.info("fold %s finished in an earlier launch (%s): not trained again", cfg.data.fold, best)
    return dict(json.loads(marker.read_text()))


def resume_fold(cfg: DictConfig) -> None:
    """Set ``ckpt_path`` to the newest checkpoint a stopped run of this fold left, if any."""
    if cfg.get("ckpt_path"):
        return
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    found = [folder / name for name in RESUMABLE if (folder / name).is_file()]
    if not found:
        return
    newest = max(found, key=lambda path: path.stat().st_mtime)
    log.info("fold %s was stopped in an earlier launch: resuming %s", cfg.data.fold, newest)
    with open_dict(cfg):
        cfg.ckpt_path = str(newest)


def mark_fold_finished(cfg: DictConfig, value: float | None) -> None:
    """Record that this fold's schedule ended with a ``best.ckpt``: a relaunch skips it."""
    run_dir = Path(cfg.paths.output_dir)
    if not (run_dir / BEST).is_file():
        return  # a wiring check (trainer.fast_dev_run) keeps no checkpoint
    record = {
        "fold": cfg.data.fold,
        "folds": cfg.data.folds,
        "optimized_metric": cfg.optimized_metric,
        "value": value,
    }
    with atomic_path(run_dir / FINISHED) as partial:
        partial.write_text(json.dumps(record) + "\n")


def say_how_the_sweep_continues(cfg: DictConfig, outcome: RunOutcome) -> None:
    """A fold stopped before its schedule ended: the resume command pneumo-train prints resumes
    it alone, outside the sweep; say how the whole cross-validation continues instead."""
    if outcome.stop(cfg.paths.output_dir) is not None:
        log.warning(
            "this fold is one of a cross-validation: to continue the whole sweep (this fold from its "
            "checkpoint, finished folds skipped), run the same command with hydra.sweep.dir=%s",
            Path(cfg.paths.output_dir).parent,
        )


def _quoted(figure: dict[str, Any]) -> str:
    """A pooled figure with the interval its ``quote`` rule names (``statistics.interval_to_quote``):
    Wilson where the patient bootstrap collapses or rests on few patients, the bootstrap otherwise."""
    method = str(figure.get("quote", "bootstrap"))
    low, high = figure[method]
    name = "boot." if method == "bootstrap" else "Wilson"
    return f"{figure['estimate']:.4f} [{low:.4f}, {high:.4f}] {name}"


def print_cv(figures: dict[str, Any], sweep: Path) -> None:
    """The folds' figures at the out-of-fold threshold, their spread, and the pooled figures."""
    by_fold, pooled = figures["by_fold"], figures["pooled"]
    table = Table(
        title=(
            f"cross-validation: {figures['films']} films of {figures['patients']} patients in "
            f"{figures['folds']} folds, threshold {figures['threshold']:.3f} (temperature "
            f"{figures['temperature']:.3f}) chosen on all of them"
        ),
        caption=(
            "optimistic, not a held-out estimate: each fold's best epoch and the threshold were chosen "
            "on these out-of-fold films; intervals: boot. the patient bootstrap, Wilson where it collapses "
            f"or a class has {FEW_PATIENTS} patients or fewer"
        ),
    )
    for column in ("fold", "AUROC", "sensitivity", "specificity", "its own threshold (log-odds)"):
        table.add_column(column, justify="right")
    stored = figures["fold_thresholds"]["logit"]
    for fold in range(figures["folds"]):
        table.add_row(
            str(fold),
            *(f"{by_fold[k]['folds'][fold]:.4f}" for k in ("auroc", "sensitivity", "specificity")),
            f"{stored['folds'][fold]:+.3f}",
        )
    table.add_row(
        "mean (sd)",
        *(
            f"{by_fold[k]['mean']:.4f} ({by_fold[k]['sd']:.4f})"
            for k in ("auroc", "sensitivity", "specificity")
        ),
        f"{stored['mean']:+.3f} ({stored['sd']:.3f})",
    )
    table.add_row(
        "pooled [95 % interval]",
        *(_quoted(pooled[k]) for k in ("auroc", "sensitivity", "specificity")),
        f"{figures['threshold_logit']:+.3f}",
    )
    Console(width=160).print(table)
    print(
        f"wrote {sweep / OOF_CSV}, {sweep / CV_JSON} and {sweep / CV_CKPT} "
        f"({figures['folds']} fold models averaged)"
    )


def _wiring_checks_only(sweep: Path) -> bool:
    """Whether every job of the sweep ran under ``trainer.fast_dev_run`` (no checkpoints)."""
    jobs = [job for job in sweep.iterdir() if (job / ".hydra" / "config.yaml").is_file()]
    return bool(jobs) and all(is_wiring_check(job) for job in jobs)


def write_cross_validation(sweep: Path) -> bool:
    """``cross_validate`` the sweep and print its figures; False, with one logged line, when it
    cannot be done (the fold runs stay)."""
    if _wiring_checks_only(sweep):
        log.info(
            "no cross-validation figures: trainer.fast_dev_run checks the wiring and keeps no checkpoints"
        )
        return True
    try:
        figures = cross_validate(sweep)
    except PneumoError as err:
        log.error("no cross-validation figures: %s (the fold runs stay)", err)
        return False
    except Exception:  # Hydra would turn it into a one-line warning without its cause
        log.exception("no cross-validation figures (the fold runs stay)")
        return False
    print_cv(figures, sweep)
    return True


def swept_folds(config: DictConfig, overrides: list[Override]) -> list[Any]:
    """The ``data.fold`` values the sweep runs: the command line's, else ``hydra.sweeper.params``'."""
    given = [o for o in overrides if o.key_or_group == "data.fold"]
    if not given:
        value = (config.hydra.sweeper.get("params") or {}).get("data.fold")
        if value is None:
            return []
        given = OverridesParser.create().parse_overrides([f"data.fold={value}"])
    fold = given[-1]
    return list(fold.sweep_iterator()) if fold.is_sweep_override() else [fold.value()]


class CrossValidationSweep(Callback):
    """The end of a ``cv=5fold`` sweep: ``oof.csv``, ``cv.json`` and ``cv.ckpt`` in the sweep folder.

    Hydra calls ``on_multirun_end`` in the launching process once every job has returned (with
    a submitit launcher too), and not at all when a job failed. Figures that cannot be computed
    are one logged line and exit status 1; the fold runs stay.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before any training: the sweep must vary the fold alone (the folds share folders
        named by the fold), and resumes are found per fold, not given."""
        overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        swept = [o.key_or_group for o in overrides if o.is_sweep_override() and o.key_or_group != "data.fold"]
        swept += [str(k) for k in (config.hydra.sweeper.get("params") or {}) if str(k) != "data.fold"]
        if swept:
            exit_with(
                PneumoError(
                    f"cv=5fold sweeps data.fold alone, and this sweep also varies {', '.join(swept)}: "
                    "run one cross-validation a setting, each its own command"
                )
            )
        folds, values = config.data.get("folds"), swept_folds(config, overrides)
        if folds is not None and sorted(values) != list(range(int(folds))):
            exit_with(
                PneumoError(
                    f"cv=5fold with data.folds={folds} sweeps data.fold over {values}: every fold must run "
                    f"once, data.fold=range({folds})"
                )
            )
        if any(o.key_or_group == "ckpt_path" for o in overrides):
            exit_with(
                PneumoError(
                    "cv=5fold resumes each fold from its own folder: launch the same command again with "
                    "hydra.sweep.dir=SWEEP_DIR instead of ckpt_path"
                )
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the cross-validation's files, or say in one line why not and exit 1."""
        if not write_cross_validation(Path(config.hydra.sweep.dir)):
            raise SystemExit(1)
