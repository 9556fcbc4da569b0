"""What a checkpoint records about its data, and the checks that hold later runs to it.

The validation split is recorded file by file in the checkpoint's metadata (``val_files``:
paths relative to the data root, or to the manifest's folder for a manifest run, with their
class names). ``pneumo-eval data.split=val``
evaluates exactly those files, and a resumed run must rebuild the same split with the same
preprocessing, or it would silently become another experiment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumo.data.dataset import Sample
from pneumo.errors import PneumoError

if TYPE_CHECKING:
    from pneumo.artifacts.checkpoint import CheckpointMeta

# Settings that decide the validation split or the preprocessing; a resume must keep them.
# Where the data lies (data.root, data.manifest.file) may change, as data moves between
# machines: what it holds is checked through the recorded validation files instead.
SPLIT_SETTINGS = (
    "seed",
    "data.seed",
    "data.val_fraction",
    "data.val_holdout",
    "data.min_val_images",
    "data.image_size",
    "data.classes",
    "data.positive_class",
    "data.manifest.columns",
    "data.manifest.labels",
)
# Which cross-validation fold a run validates on (null: the carved split); absent from older
# checkpoints, which count as null.
FOLD_SETTINGS = ("data.folds", "data.fold")
# Settings whose change would not continue the training that the checkpoint holds: weight
# averaging keeps a second set of weights, which a resume without it would drop; best.ckpt,
# early stopping and a plateau schedule keep their state per monitored figure.
TRAINING_STATE_SETTINGS = ("callbacks.weight_averaging", "monitor.metric", "monitor.mode")


def record_files(samples: Sequence[Sample], root: str | Path, classes: Sequence[str]) -> list[list[str]]:
    """``[[path relative to root, class name], ...]``: a split as plain data for a checkpoint."""
    root = Path(root)
    return [[Path(s.path).relative_to(root).as_posix(), classes[s.label]] for s in samples]


def files_fingerprint(samples: Sequence[Sample], root: str | Path, classes: Sequence[str]) -> dict[str, Any]:
    """``{"count": n, "sha256": hex}`` of a split's files and classes, whatever their order.

    Kept for the training files, where a list would weigh megabytes: enough to tell that a
    resumed run would train on other films (a manifest's test row moved to train, say).
    """
    lines = sorted(f"{path}\t{name}" for path, name in record_files(samples, root, classes))
    digest = hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
    return {"count": len(lines), "sha256": digest}


def _examples(paths: Sequence[str], limit: int = 3) -> str:
    """The first few of ``paths``, for a one-line message."""
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def refuse_unrecorded(meta: CheckpointMeta, ckpt_path: str | Path, action: str) -> None:
    """Stop when a checkpoint predates recorded validation files.

    Its split cannot be rebuilt: the patient rule has since been corrected, so a rebuild
    would put some of its training films into validation. Its scheduler state also predates
    the exact-resume fix.
    """
    if meta.val_files is None:
        raise PneumoError(
            f"cannot {action}: {ckpt_path} was written by an older pneumo that did not record its "
            "validation files, and the split cannot be rebuilt exactly; evaluate it on a split "
            "folder (data.split=test), or train a new run"
        )


def validation_samples(meta: CheckpointMeta, root: str | Path, ckpt_path: str | Path) -> list[Sample]:
    """The files the run validated on, under ``root``.

    Every recorded file must exist: evaluating a part of the split would not be the split.
    """
    root = Path(root)
    refuse_unrecorded(meta, ckpt_path, "evaluate its validation split")
    val_files = meta.val_files
    assert val_files is not None  # refuse_unrecorded stops otherwise
    missing = [path for path, _ in val_files if not (root / path).is_file()]
    if missing:
        manifest = config_value(meta.config, "data.manifest.file")
        where = (
            "the data the run was trained on"
            if manifest in (None, ABSENT)
            else f"the folder of the run's manifest ({manifest}): its paths are relative to it"
        )
        raise PneumoError(
            f"{len(missing)} of the {len(val_files)} validation files recorded in {ckpt_path} are "
            f"missing under data.root={root} ({_examples(missing)}); set data.root to {where}"
        )
    return [Sample(root / path, meta.classes.index(name)) for path, name in val_files]


ABSENT = object()


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value at dotted ``key`` of a resolved config, or ``ABSENT`` where it has no such key."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return ABSENT
        node = node[part]
    return node


def _printed_value(value: Any) -> Any:
    """A setting as a user would type it in an override (an absent one was null)."""
    return "null" if value is ABSENT or value is None else value


FOLD_CHANGE = (
    "that changes which films validate (the cross-validation fold); resume with {key}={then}, "
    "or start a new run"
)
STATE_CHANGE = (
    "the run would not continue the weights it holds; resume with the same setting, or start a new run"
)


def check_resume(saved: CheckpointMeta, current: CheckpointMeta, ckpt_path: str | Path) -> None:
    """Refuse to resume when ``current`` would split or preprocess the data unlike ``saved``,
    or would drop training state that ``saved`` holds (averaged weights).

    ``saved`` is read from ``ckpt_path``, ``current`` built for this run. An ensemble holds
    no training state (optimiser, epoch) to continue, and is refused first.
    """
    saved.refuse_ensemble(ckpt_path, "resuming training", "resume one of its members, or start a new run")
    refuse_unrecorded(saved, ckpt_path, "resume")
    for key in SPLIT_SETTINGS:
        then, now = config_value(saved.config, key), config_value(current.config, key)
        if ABSENT not in (then, now) and then != now:
            raise PneumoError(
                f"resuming {ckpt_path} with {key}={now}, but it was trained with {key}={then}: that "
                f"changes the validation split or the preprocessing; resume with {key}={then}, or "
                "start a new run"
            )
    # settings that must stay as the run began, with what changing them would break
    kept = [(key, FOLD_CHANGE) for key in FOLD_SETTINGS]
    kept += [(key, STATE_CHANGE) for key in TRAINING_STATE_SETTINGS]
    for key, why in kept:
        then = _printed_value(config_value(saved.config, key))
        now = _printed_value(config_value(current.config, key))
        if then != now:
            raise PneumoError(
                f"resuming {ckpt_path} with {key}={now}, but it was trained with {key}={then}: "
                + why.format(key=key, then=then)
            )
    _check_validation_files(saved, current, ckpt_path)
    _check_training_files(saved, current, ckpt_path)


def _check_validation_files(saved: CheckpointMeta, current: CheckpointMeta, ckpt_path: str | Path) -> None:
    """Refuse a resume whose validation files differ from the recorded ones, naming a few."""
    then, now = saved.val_files, current.val_files
    if then is None or now is None or then == now:
        return
    gone = sorted({p for p, _ in then} - {p for p, _ in now})
    new = sorted({p for p, _ in now} - {p for p, _ in then})
    changed = f"{len(gone)} recorded files not in it, e.g. {_examples(gone)}" if gone else ""
    if new:
        changed += ("; " if changed else "") + f"{len(new)} files new to it, e.g. {_examples(new)}"
    raise PneumoError(
        f"resuming {ckpt_path}: the validation split under {_source(current)} differs from the one it "
        f"was trained with ({changed or 'labels changed'}); resume with the same data, or start a new run"
    )


def _source(meta: CheckpointMeta) -> str:
    """Where a run's data came from, as its setting: ``data.root=...`` or ``data.manifest.file=...``."""
    manifest = config_value(meta.config, "data.manifest.file")
    key = "data.root" if manifest in (None, ABSENT) else "data.manifest.file"
    return f"{key}={config_value(meta.config, key)}"


def _check_training_files(saved: CheckpointMeta, current: CheckpointMeta, ckpt_path: str | Path) -> None:
    """Refuse a resume whose training files differ from the recorded ones (when both are known)."""
    then, now = saved.train_files, current.train_files
    if then is None or now is None or then == now:
        return
    raise PneumoError(
        f"resuming {ckpt_path}: the training files under {_source(current)} differ from the ones it was "
        f"trained with ({now['count']} files now, {then['count']} then, or other files or labels); "
        "resume with the same data, or start a new run"
    )


# What may differ between the folds of one cross-validation: where things lie, how fast the
# films load or a step runs (model.optimizer.fused: the same update to float rounding; absent
# from folds trained before it existed), what is logged, and the fold itself.
FOLD_FREE_SETTINGS = (
    "paths",
    "ckpt_path",
    "task_name",
    "logger",
    "slurm",
    "callbacks.progress_bar",
    "data.fold",
    "data.root",
    "data.manifest.file",
    "data.num_workers",
    "data.cache",
    "data.cache_dir",
    "model.optimizer.fused",
)


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"a.b.c": value}``."""
    if not isinstance(config, dict):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _own_dir_relative(flat: dict[str, Any]) -> dict[str, Any]:
    """Settings naming a place inside the run's own directory, written relative to it."""
    own = flat.get("paths.output_dir")
    if not isinstance(own, str) or not own:
        return flat
    return {k: v.replace(own, "${paths.output_dir}") if isinstance(v, str) else v for k, v in flat.items()}


def fold_differences(first: dict[str, Any], other: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, first's value, other's value)`` for every setting two folds of one cross-validation
    must share but do not (all but ``FOLD_FREE_SETTINGS``); ``trainer.precision=auto`` matches
    the precision it resolved to, and a path inside each run's own directory (``paths.output_dir``)
    matches the same path inside the other's."""
    a, b = _own_dir_relative(_flat(first)), _own_dir_relative(_flat(other))
    differences = []
    for key in sorted(set(a) | set(b)):
        if any(key == free or key.startswith(free + ".") for free in FOLD_FREE_SETTINGS):
            continue
        then, now = a.get(key, ABSENT), b.get(key, ABSENT)
        if key == "trainer.precision" and "auto" in (then, now):
            continue
        if then != now:
            differences.append((key, _printed_value(then), _printed_value(now)))
    return differences
