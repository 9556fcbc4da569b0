"""What a checkpoint records about its data, and the checks that hold later runs to it.

The validation split is recorded file by file in the checkpoint's metadata (``val_files``:
paths relative to the data root, with their class names). ``pneumo-eval data.split=val``
evaluates exactly those files, and a resumed run must rebuild the same split with the same
preprocessing, or it would silently become another experiment.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pneumo.data.dataset import Sample
from pneumo.errors import PneumoError

# Settings that decide the validation split or the preprocessing; a resume must keep them.
SPLIT_SETTINGS = (
    "seed",
    "data.seed",
    "data.val_fraction",
    "data.val_holdout",
    "data.min_val_images",
    "data.image_size",
    "data.classes",
)


def record_files(samples: Sequence[Sample], root: str | Path, classes: Sequence[str]) -> list[list[str]]:
    """``[[path relative to root, class name], ...]``: a split as plain data for a checkpoint."""
    root = Path(root)
    return [[Path(s.path).relative_to(root).as_posix(), classes[s.label]] for s in samples]


def _examples(paths: Sequence[str], limit: int = 3) -> str:
    """The first few of ``paths``, for a one-line message."""
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def recorded_validation(meta: dict[str, Any], root: str | Path, ckpt_path: str | Path) -> list[Sample] | None:
    """The checkpoint's validation files under ``root``; ``None`` for a checkpoint without the list.

    Every file must exist: evaluating a part of the split would not be the split.
    """
    recorded = meta.get("val_files")
    if recorded is None:
        return None
    root = Path(root)
    classes = list(meta["classes"])
    missing = [path for path, _ in recorded if not (root / path).is_file()]
    if missing:
        raise PneumoError(
            f"{len(missing)} of the {len(recorded)} validation files recorded in {ckpt_path} are "
            f"missing under data.root={root} ({_examples(missing)}); set data.root to the data the "
            "run was trained on"
        )
    return [Sample(root / path, classes.index(name)) for path, name in recorded]


_ABSENT = object()


def _setting(config: dict[str, Any], key: str) -> Any:
    """The value at dotted ``key`` of a resolved config, or ``_ABSENT``."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def check_resume(saved: dict[str, Any], current: dict[str, Any], ckpt_path: str | Path) -> None:
    """Refuse to resume when ``current`` would split or preprocess the data unlike ``saved``.

    Both are pneumo checkpoint metadata: ``saved`` from ``ckpt_path``, ``current`` built from
    this run's config. Settings missing from either side (older checkpoints) are not compared.
    """
    for key in SPLIT_SETTINGS:
        then, now = _setting(saved.get("config", {}), key), _setting(current.get("config", {}), key)
        if _ABSENT not in (then, now) and then != now:
            raise PneumoError(
                f"resuming {ckpt_path} with {key}={now}, but it was trained with {key}={then}: that "
                f"changes the validation split or the preprocessing; resume with {key}={then}, or "
                "start a new run"
            )
    then, now = saved.get("val_files"), current.get("val_files")
    if then is None or now is None or then == now:
        return
    gone = sorted({p for p, _ in then} - {p for p, _ in now})
    new = sorted({p for p, _ in now} - {p for p, _ in then})
    changed = f"{len(gone)} recorded files not in it, e.g. {_examples(gone)}" if gone else ""
    if new:
        changed += ("; " if changed else "") + f"{len(new)} files new to it, e.g. {_examples(new)}"
    root = _setting(current.get("config", {}), "data.root")
    raise PneumoError(
        f"resuming {ckpt_path}: the validation split under data.root={root} differs from the one "
        f"it was trained with ({changed or 'labels changed'}); resume with the same data, or start "
        "a new run"
    )
