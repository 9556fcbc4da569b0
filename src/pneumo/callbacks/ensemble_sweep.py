"""The end of an ``ensemble=seeds`` sweep (a Hydra callback): its jobs averaged into
``SWEEP_DIR/ensemble.ckpt``, their figures printed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from pneumo.errors import PneumoError, exit_with, printable
from pneumo.serving.ensemble import BEST, make_ensemble

log = logging.getLogger(__name__)

# Figures printed for the ensemble and each member, all at their own thresholds.
FIGURES_SHOWN = ("auroc", "sensitivity", "specificity")


def print_figures(figures: dict[str, dict[str, Any]]) -> None:
    """The ensemble and its members on the shared validation films, each at its threshold;
    members by number, their files listed above (sweep folders' names are long)."""
    names = [name for name in figures if name != "ensemble"]
    for number, name in enumerate(names, 1):
        print(f"member {number}: {printable(name)}")
    table = Table(
        title=f"validation: {figures['ensemble']['n']} films, each model at its own threshold",
        # every best epoch and threshold was picked on these very films
        caption="optimistic: models and thresholds were chosen on these films",
    )
    table.add_column("model")
    table.add_column("threshold", justify="right")
    for key in FIGURES_SHOWN:
        table.add_column(key, justify="right")
    rows = [(f"member {number}", figures[name]) for number, name in enumerate(names, 1)]
    for label, row in [*rows, ("ensemble", figures["ensemble"])]:
        table.add_row(label, f"{row['threshold']:.3f}", *(f"{row[k]:.4f}" for k in FIGURES_SHOWN))
    Console().print(table)


def write_ensemble(
    args: Sequence[str | Path], out: str | Path, data_root: str | Path | None = None
) -> dict[str, dict[str, Any]]:
    """``make_ensemble``, then print its figures and the file written: all pneumo-ensemble does."""
    figures = make_ensemble(args, out, data_root)
    print_figures(figures)
    print(f"wrote {out} ({len(figures) - 1} members, threshold {figures['ensemble']['threshold']:.3f})")
    return figures


class EnsembleSweep(Callback):
    """The end of an ``ensemble=seeds`` sweep: ``pneumo-ensemble SWEEP_DIR --out SWEEP_DIR/ensemble.ckpt``.

    Hydra calls ``on_multirun_end`` in the launching process once every job has returned (with
    a submitit launcher too), and not at all when a job failed. An ensemble that cannot be built
    is one logged line (a traceback only for an unexpected error) and exit status 1; the runs stay.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before any training: refuse a resume (every job would resume the one checkpoint), and
        warn when the sweep varies more than the seed (the members would differ in that too)."""
        overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        # a swept ckpt_path is absent from this config, an interpolated one cannot resolve yet
        resumed = []
        for override in overrides:
            if override.key_or_group == "ckpt_path":
                assert override.input_line is not None  # parse_overrides keeps each override's text
                resumed.append(override.input_line.split("=", 1)[1])
        for key in ("ckpt_path", "hydra.sweeper.params.ckpt_path"):
            resumed.append(OmegaConf.select(config, key, throw_on_resolution_failure=False))
        ckpt_path = next((value for value in resumed if value not in (None, "null")), None)
        if ckpt_path:
            exit_with(
                PneumoError(
                    f"ensemble=seeds trains new members and cannot resume ckpt_path={ckpt_path}: "
                    "resume that member alone, without ensemble=seeds (pneumo-train experiment=... seed=N "
                    "ckpt_path=MEMBER/checkpoints/last.ckpt hydra.run.dir=MEMBER), then average the sweep "
                    "with pneumo-ensemble SWEEP_DIR --out SWEEP_DIR/ensemble.ckpt"
                )
            )
        swept = [o.key_or_group for o in overrides if o.is_sweep_override() and o.key_or_group != "seed"]
        if swept:
            log.warning(
                "ensemble=seeds averages every job of this sweep, and it also sweeps %s: the members "
                "will differ in that too; sweep only seed for a seed ensemble",
                ", ".join(swept),
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Build SWEEP_DIR/ensemble.ckpt, or say in one line why not and exit 1 (the runs stay)."""
        if not build_sweep_ensemble(Path(config.hydra.sweep.dir)):
            # the command's product is the ensemble: a script chaining on it must not go on
            raise SystemExit(1)


def is_wiring_check(job: Path) -> bool:
    """Whether a sweep's job ran under ``trainer.fast_dev_run``, which keeps no checkpoints."""
    saved = job / ".hydra" / "config.yaml"
    return saved.is_file() and bool(
        OmegaConf.select(OmegaConf.load(saved), "trainer.fast_dev_run", throw_on_resolution_failure=False)
    )


def build_sweep_ensemble(sweep: Path) -> bool:
    """Average the jobs of ``sweep`` into ``sweep/ensemble.ckpt``. False, with one logged line, when
    that is not possible; True also when every job was a wiring check (nothing to average)."""
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir() and not d.name.startswith("."))
    if jobs and all(is_wiring_check(job) for job in jobs):
        log.info("no ensemble built: trainer.fast_dev_run checks the wiring and keeps no checkpoints")
        return True
    missing = [job.name for job in jobs if not (job / BEST).is_file()]
    finished = len(jobs) - len(missing)
    if finished < 2:
        others = f" ({', '.join(missing)} did not)" if missing else ""
        log.error(
            f"no ensemble built: it needs two members or more, and {finished} of the {len(jobs)} jobs "
            f"in {sweep} wrote {BEST}{others}; the members that finished stay usable with pneumo-ensemble"
        )
        return False
    if missing:
        log.warning(
            "%s wrote no %s: the ensemble averages the other %d jobs", ", ".join(missing), BEST, finished
        )
    try:
        write_ensemble([sweep], sweep / "ensemble.ckpt")
    except PneumoError as err:
        log.error("no ensemble built: %s (the members stay usable with pneumo-ensemble)", err)
        return False
    except Exception:  # Hydra would turn it into a one-line warning without its cause
        log.exception("no ensemble built (the members stay usable with pneumo-ensemble)")
        return False
    return True
