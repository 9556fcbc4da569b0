"""pneumo-train: the Hydra entry point that trains the classifier.

pneumo-train experiment=quickstart
pneumo-train data.root=DATA data.batch_size=32 trainer.max_epochs=35
pneumo-train -m data.batch_size=8,16,32 trainer.max_epochs=5,10
pneumo-train trainer=ddp trainer.devices=4

The training itself is a library (``pneumo.training``): compose, check, build, fit.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict

from pneumo.artifacts.rundir import launch_rank, remove_unused_run_dir
from pneumo.callbacks.run_outcome import RunOutcome
from pneumo.cli.launch import prepare_launch, requeued_resume
from pneumo.cli.stopped import end_run
from pneumo.errors import PneumoError, exit_on_user_error
from pneumo.training.cv_sweep import (
    finished_fold,
    is_fold_job,
    mark_fold_finished,
    resume_fold,
    say_how_the_sweep_continues,
)
from pneumo.training.fit import optimized_value, train
from pneumo.training.settings import config_errors

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://pneumo.conf", config_name="train")
@exit_on_user_error
@config_errors
def hydra_main(cfg: DictConfig) -> float | None:
    """Train; return ``optimized_metric`` for Hydra sweepers to optimise.

    Hydra's basic launcher runs ``-m`` jobs in this process, and Lightning's DDP launcher
    would start each further process with this whole command line, sweep included; such
    jobs must stay in one process.

    Before any film is decoded, ``train`` checks every setting and the validation split. Under
    SLURM the cluster environment requeues the job on SIGUSR1 only with ``slurm.requeue=true``. A run
    stopped before its schedule finished (Ctrl-C, SIGTERM, SIGUSR1, ``trainer.max_time``) says
    so in one line with the command that resumes it, and exits non-zero (``end_run``).
    """
    hydra_cfg = HydraConfig.get()
    in_process_sweep = hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.launcher._target_.endswith(
        ".BasicLauncher"
    )
    requeue = bool(OmegaConf.select(cfg, "slurm.requeue", default=False))
    if SLURMEnvironment.detect():
        if (
            requeue
            and hydra_cfg.mode == RunMode.RUN
            and not any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra)
        ):
            raise PneumoError(
                "slurm.requeue=true: a requeued job runs its command line again, so name the run's "
                "directory, e.g. hydra.run.dir=outputs/train/runs/$SLURM_JOB_ID, and it continues there"
            )
        plugins = list(cfg.trainer.get("plugins") or [])
        if not any(str(p.get("_target_", "")).endswith("SLURMEnvironment") for p in plugins):
            environment = "lightning.fabric.plugins.environments.SLURMEnvironment"
            with open_dict(cfg):
                cfg.trainer.plugins = [*plugins, {"_target_": environment, "auto_requeue": requeue}]
    elif requeue:
        log.warning("slurm.requeue=true, but this is no SLURM job (SLURM_NTASKS unset): nothing to requeue")
    # a fold of a cross-validation sweep launched again: done once, or resumed where it stopped
    fold_job = is_fold_job(cfg, hydra_cfg.mode == RunMode.MULTIRUN)
    if fold_job:
        finished = finished_fold(cfg)
        if finished is not None:
            return finished["value"]
        resume_fold(cfg)
    outcome = RunOutcome()
    resume_args, max_time = list(hydra_cfg.overrides.task), cfg.trainer.get("max_time")
    # a run refused by its settings or data leaves no folder of Hydra's naming behind (a folder
    # the user named, or a sweep's, stays)
    own = hydra_cfg.mode == RunMode.RUN and launch_rank()[0] == 0 and _launch_own(cfg, hydra_cfg)
    refused = functools.partial(remove_unused_run_dir, cfg.paths.output_dir) if own else None
    try:
        results = train(cfg, callbacks=[outcome], one_process_only=in_process_sweep, on_refused=refused)
    except SystemExit:  # Lightning ends a run on Ctrl-C or SIGTERM with SystemExit (status 1 or 0)
        if fold_job:
            say_how_the_sweep_continues(cfg, outcome)
        end_run(outcome, cfg.paths.output_dir, resume_args, max_time)
        raise
    # a sweep in this process goes on to its next job; a cluster job is its own process
    if fold_job:
        say_how_the_sweep_continues(cfg, outcome)
    end_run(outcome, cfg.paths.output_dir, resume_args, max_time, in_sweep=in_process_sweep)
    value = optimized_value(cfg, results)
    if fold_job and outcome.stop(cfg.paths.output_dir) is None:
        mark_fold_finished(cfg, value)
    return value


def _launch_own(cfg: DictConfig, hydra_cfg: Any) -> bool:
    """Whether the run directory is the one Hydra named for this launch alone: the default
    ``outputs/TASK/runs/DATE_TIME_MICROSECONDS`` (conf/hydra/default.yaml) under the folder
    pneumo-train ran in, and the run's own ``paths.output_dir``."""
    path = Path(hydra_cfg.runtime.output_dir)
    runs = Path(hydra_cfg.runtime.cwd) / "outputs" / str(cfg.task_name) / "runs"
    return (
        path.resolve() == Path(cfg.paths.output_dir).resolve()
        and path.parent.resolve() == runs.resolve()
        and re.fullmatch(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d{6}", path.name) is not None
    )


@exit_on_user_error
def main() -> None:
    """pneumo-train: a resume continues in its checkpoint's run directory (``prepare_launch``),
    and a SLURM job started again by a requeue resumes its run (``requeued_resume``)."""
    sys.argv = [sys.argv[0], *prepare_launch(requeued_resume(sys.argv[1:]))]
    try:
        hydra_main()
    except KeyboardInterrupt:  # before training began (listing the films, building the run)
        print("error: stopped by Ctrl-C (SIGINT) before training began; nothing was saved", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
