"""An Optuna search over pneumo-train's settings, maximising validation AUROC (``pneumo-search``).

Its config is ``conf/search.yaml``: pneumo-train's (``train.yaml``) plus the ``hparams_search``
group, whose files (``conf/hparams_search/``) hold the space, the sampler, the pruner and the
number of trials under ``search.*``. Every trial is an ordinary pneumo-train run
(``train(compose_config(...))``, one device) composed from that config, in its
own folder of the search's directory, so ``scripts/compare_runs.py`` and TensorBoard read
trials as they read sweep jobs. The study is kept in ``study.db`` (SQLite) in the same
directory: a search launched again into it continues where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pneumo.callbacks.trial_pruning import TrialPruning
from pneumo.errors import PneumoError
from pneumo.training.config import compose_config
from pneumo.training.fit import optimized_value, train
from pneumo.training.settings import check_train_config

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

STUDY_FILE = "study.db"
# conf/search.yaml: train.yaml plus the hparams_search group; the search and its trials read it
SEARCH_CONFIG = "search"
STUDY_NAME = "pneumo"
# Hydra's format, so a trial's train.log reads like a pneumo-train run's
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def _optuna() -> Any:
    """The optuna module, or a one-line error saying how to install it."""
    try:
        import optuna
    except ImportError as err:
        raise PneumoError(f"pneumo-search needs Optuna: pip install 'pneumo[search]' ({err})") from err
    return optuna


def parse_space(params: dict[str, str]) -> dict[str, Any]:
    """Optuna distributions for ``search.params``, written in Hydra's sweep syntax."""
    optuna = _optuna()
    parser = OverridesParser.create()
    space: dict[str, Any] = {}
    for key, text in params.items():
        where = f"search.params.{key}={text}"
        try:
            sweep = parser.parse_override(f"{key}={text}").value()
        except Exception as err:  # Hydra's parser raises its own error types
            raise PneumoError(f"{where}: not Hydra sweep syntax ({err})") from err
        if isinstance(sweep, ChoiceSweep) and all(
            v is None or isinstance(v, (bool, int, float, str)) for v in sweep.list
        ):
            space[key] = optuna.distributions.CategoricalDistribution(sweep.list)
        elif isinstance(sweep, IntervalSweep) and sweep.tags <= {"log", "int"}:
            log_scale = "log" in sweep.tags
            assert sweep.start is not None and sweep.end is not None  # interval(low, high) sets both
            if "int" in sweep.tags:
                space[key] = optuna.distributions.IntDistribution(
                    int(sweep.start), int(sweep.end), log=log_scale
                )
            else:
                space[key] = optuna.distributions.FloatDistribution(sweep.start, sweep.end, log=log_scale)
        else:
            raise PneumoError(
                f"{where}: use choice(a, b, ...) of plain values, interval(low, high), "
                "tag(log, interval(...)) or tag(int, interval(...))"
            )
    return space


def override_value(value: Any) -> str:
    """``value`` as pneumo-train reads it on its command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def trial_dir_name(number: int, params: dict[str, Any]) -> str:
    """``NUM_KEY=VALUE,...`` like a sweep job's folder, so compare_runs names trials by their
    settings; floats are rounded to 3 digits and a group's ``/`` becomes ``-`` in the name only
    (the exact overrides are in the run's ``.hydra/overrides.yaml``)."""
    shown = (
        f"{key.replace('/', '-')}={f'{v:.3g}' if isinstance(v, float) else override_value(v)}"
        for key, v in sorted(params.items())
    )
    return f"{number}_{','.join(shown)}"


@contextlib.contextmanager
def _run_log(run_dir: Path) -> Iterator[None]:
    """Copy log records to ``run_dir/train.log`` while a trial runs, as Hydra does for a run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _compose(overrides: list[str], run_dir: str | Path) -> DictConfig:
    """``compose_config`` of ``conf/search.yaml``, with Hydra's message for a bad override as one line."""
    try:
        return compose_config(overrides, run_dir, config_name=SEARCH_CONFIG)
    except HydraException as err:
        raise PneumoError(" ".join(line.strip() for line in str(err).splitlines() if line.strip())) from None


def _record(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """Write ``.hydra/config.yaml`` and ``overrides.yaml`` as Hydra does for a pneumo-train run,
    so a trial can be rerun with ``pneumo-train --config-name search`` and its overrides."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")


def search_config(overrides: list[str]) -> DictConfig:
    """The composed config of the search's base overrides, checked for what a search needs."""
    _optuna()  # a missing Optuna is reported before anything else
    # compose_config wants a run directory; this config only supplies the search settings
    cfg = _compose(overrides, ".")
    if cfg.get("search") is None:
        raise PneumoError(
            "no search settings: choose a space with hparams_search=NAME (conf/hparams_search/)"
        )
    devices, nodes = cfg.trainer.get("devices"), cfg.trainer.get("num_nodes", 1)
    if devices != 1 or nodes != 1:
        raise PneumoError(
            f"pneumo-search trains each trial on one device: set trainer.devices=1 and trainer.num_nodes=1 "
            f"(got devices={devices}, num_nodes={nodes}); for DDP jobs use a sweep with launcher=slurm"
        )
    check_train_config(cfg)  # what every trial shares, before any trial decodes a film
    return cfg


def _run_trial(study: optuna.Study, space: dict[str, Any], overrides: list[str], search_dir: Path) -> None:
    """Ask the study for settings, train them in their own run folder and tell it the result."""
    optuna = _optuna()
    trial = study.ask(space)
    settings = [f"{key}={override_value(value)}" for key, value in trial.params.items()]
    run_dir = search_dir / trial_dir_name(trial.number, trial.params)
    trial.set_user_attr("run_dir", str(run_dir))
    log.info("trial %d: %s", trial.number, " ".join(settings))
    pruning: TrialPruning | None = None
    try:
        cfg = _compose([*overrides, *settings], run_dir)
        pruning = TrialPruning(trial, cfg.monitor.metric)
        with _run_log(run_dir):
            _record(run_dir, cfg, [*overrides, *settings])
            results = train(cfg, callbacks=[pruning])
    except PneumoError as err:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if pruning is None or not pruning.trained:
            raise  # the data, the config or the folder: every trial would meet it
        log.warning("trial %d failed: %s", trial.number, err)
        return
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    if pruning.pruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return
    value = optimized_value(cfg, results)
    if value is None:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    study.tell(trial, value)
    log.info("trial %d: %s %.4f  (%s)", trial.number, cfg.optimized_metric, value, run_dir)


def _open_study(cfg: DictConfig, search_dir: Path) -> optuna.Study:
    """Create the study in ``search_dir/study.db``, or load it to continue it.

    A continued search's sampler is seeded with ``search.sampler.seed`` plus the number of
    trials already there: seeded alike, it would propose the first launch's settings again.
    A continued search must score trials as the study does (``_check_goal``).
    """
    optuna = _optuna()
    search_dir.mkdir(parents=True, exist_ok=True)
    direction = "maximize" if cfg.monitor.mode == "max" else "minimize"
    study = optuna.create_study(
        storage=f"sqlite:///{search_dir.absolute() / STUDY_FILE}",
        study_name=STUDY_NAME,
        load_if_exists=True,
        pruner=instantiate(cfg.search.pruner),
        direction=direction,
    )
    _check_goal(study, {"optimized_metric": cfg.optimized_metric, "direction": direction}, search_dir)
    seed = cfg.search.sampler.get("seed")
    study.sampler = instantiate(
        cfg.search.sampler, **({} if seed is None else {"seed": seed + len(study.trials)})
    )
    return study


def _check_goal(study: optuna.Study, goal: dict[str, str], search_dir: Path) -> None:
    """Record what the study optimises, or stop a continued search that would optimise another thing.

    Optuna loads an existing study with its own direction whatever it is asked for, so a launch
    with another ``monitor.mode`` or ``optimized_metric`` would rank its trials against the
    earlier ones by the wrong figure, or the wrong way round.
    """
    recorded = dict(study.user_attrs.get("goal") or {})
    recorded.setdefault("direction", study.direction.name.lower())
    recorded.setdefault("optimized_metric", goal["optimized_metric"])  # studies from before the record
    if recorded != goal:
        raise PneumoError(
            f"{search_dir / STUDY_FILE} is a search to {recorded['direction']} "
            f"{recorded['optimized_metric']}, this launch asks to {goal['direction']} "
            f"{goal['optimized_metric']}; launch with the study's monitor and optimized_metric, or "
            "give a new search.dir"
        )
    study.set_user_attr("goal", goal)


def search(overrides: list[str], cfg: DictConfig | None = None) -> optuna.Study:
    """Run the search that ``overrides`` (pneumo-train's, plus ``search.*``) describe; return its study.

    ``hparams_search=default`` (``conf/search.yaml``) is used unless another space is chosen.
    ``cfg`` is ``search_config(overrides)`` where the caller has it already (the folder it names
    holds a time of day). Trials already finished in ``search.dir`` (complete, pruned or
    failed) count towards ``search.n_trials``.
    """
    cfg = search_config(overrides) if cfg is None else cfg
    search_dir = Path(cfg.search.dir)
    # every trial records the search it belongs to, not a time of its own
    overrides = [o for o in overrides if not o.startswith("search.dir=")] + [f"search.dir='{search_dir}'"]
    params = OmegaConf.to_container(cfg.search.params, resolve=True)
    assert isinstance(params, dict)  # search.params is a mapping
    space = parse_space({str(key): str(text) for key, text in params.items()})
    study = _open_study(cfg, search_dir)
    finished = sum(t.state.is_finished() for t in study.trials)
    if finished:
        to_go = max(0, cfg.search.n_trials - finished)
        log.info("%s holds %d finished trials; %d to go", search_dir, finished, to_go)
    for _ in range(cfg.search.n_trials - finished):
        _run_trial(study, space, overrides, search_dir)
    return study
