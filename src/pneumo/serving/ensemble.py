"""Several trained models averaged into one: which may be averaged, and the averaging.

Members must share classes, positive class, preprocessing, validation films and threshold
rule (trained alike but for the seed). The ensemble's threshold is chosen on those
validation films by the members' own rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pneumo.artifacts.checkpoint import AtomicCheckpointIO, CheckpointMeta
from pneumo.data.dataset import Sample
from pneumo.data.manifest import Manifest
from pneumo.data.provenance import refuse_unrecorded, validation_samples
from pneumo.errors import PneumoError
from pneumo.model.calibration import fit_temperature, margin_from_probability
from pneumo.model.metrics import evaluation_metrics
from pneumo.model.network import Ensemble
from pneumo.model.threshold import PLATEAU_TOLERANCE, choose_threshold
from pneumo.serving.inference import predict
from pneumo.serving.loading import LoadedModel, load_model

BEST = Path("checkpoints") / "best.ckpt"


def member_paths(args: Sequence[str | Path]) -> list[Path]:
    """The checkpoint each argument names: the file itself, a run's checkpoints/best.ckpt,
    or that of every run in a sweep directory; at least two, each once."""
    paths: list[Path] = []
    for raw in args:
        path = Path(raw)
        if path.is_file():
            paths.append(path)
        elif (path / BEST).is_file():
            paths.append(path / BEST)
        elif path.is_dir():
            found = sorted(path.glob(f"*/{BEST.as_posix()}"))
            if not found:
                raise PneumoError(
                    f"{path} holds no {BEST} nor */{BEST}; give checkpoint files, run directories "
                    "or a sweep directory"
                )
            paths.extend(found)
        else:
            raise PneumoError(f"ensemble member not found: {path}")
    seen: dict[Path, Path] = {}
    for path in paths:
        same = seen.setdefault(path.resolve(), path)
        if same is not path:
            raise PneumoError(f"{path} is given twice (also as {same}); give each member once")
    if len(paths) < 2:
        raise PneumoError(
            f"an ensemble needs at least two members, got {len(paths)} ({', '.join(map(str, paths))}); "
            "give more checkpoints, or a sweep directory"
        )
    return paths


def threshold_by_rule(meta: CheckpointMeta, probs: torch.Tensor, positive: torch.Tensor) -> float:
    """The threshold the run's own rule (``model.threshold_method`` and its parameters, as
    recorded in ``meta``) chooses on ``probs`` of films whose truth is ``positive``."""
    rule = shared_settings(meta)
    return choose_threshold(
        probs,
        positive,
        rule["model.threshold_method"],
        rule["model.target_sensitivity"],
        rule["model.plateau_tolerance"],
    )


def rule_parameters(meta: CheckpointMeta) -> dict[str, Any]:
    """The threshold rule's settings as recorded (``threshold_method``, ``target_sensitivity``, ...)."""
    return {k.removeprefix("model."): v for k, v in shared_settings(meta).items() if k.startswith("model.")}


def shared_settings(meta: CheckpointMeta) -> dict[str, Any]:
    """What members must share to be averaged: the task, the input, the validation films
    (in any order) and the rule that turns them into a threshold."""
    model = meta.config.get("model", {})
    return {
        "classes": meta.classes,
        "positive_class": meta.positive_class,
        "preprocessing.image_size": meta.image_size,
        "preprocessing.mean": list(meta.mean),
        "preprocessing.std": list(meta.std),
        "val_files": sorted(map(tuple, meta.val_files or [])),
        # the defaults of XrayClassifier and pneumo-eval, for checkpoints without a config
        "model.threshold_method": model.get("threshold_method", "youden"),
        "model.target_sensitivity": model.get("target_sensitivity", 0.95),
        "model.plateau_tolerance": model.get("plateau_tolerance", PLATEAU_TOLERANCE),
    }


def _described(key: str, value: Any, other: Any) -> str:
    """A setting's value for a one-line message: validation files by count and an example."""
    if key != "val_files":
        return repr(value)
    only = sorted(set(value) - set(other))
    return f"{len(value)} files" + (f", {only[0][0]} among them" if only else "")


# What to do about a setting members do not share. The validation films follow the seed
# unless data.seed is fixed or the holdout does not depend on it.
SAME_SETTINGS = "train them alike but for the seed (pneumo-train -m ... seed=1,2,3)"
SAME_FILMS = "train them on the same data with data.val_holdout=earliest, or with one data.seed"


def _weights_digest(net: torch.nn.Module) -> str:
    """A SHA-256 of a network's weights and buffers, by name: equal for copies of one model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_members(members: Sequence[LoadedModel]) -> None:
    """Refuse members that cannot be averaged: an ensemble among them, one whose shared
    settings differ from the first member's (naming the file, the key and both values), or two
    holding the same weights (a copy would count one model twice)."""
    first = shared_settings(members[0].meta)
    seen: dict[str, Path] = {}
    for member in members:
        same = seen.setdefault(_weights_digest(member.net), member.path)
        if same != member.path:
            raise PneumoError(
                f"{member.path} holds the same weights as {same} (a copy of one model): an ensemble of "
                "them would count that model twice; give each trained model once"
            )
    for member in members:
        member.meta.refuse_ensemble(member.path, "an ensemble member", "give its members instead")
        refuse_unrecorded(member.meta, member.path, "make it an ensemble member")
        for key, value in shared_settings(member.meta).items():
            if value == first[key]:
                continue
            advice = SAME_FILMS if key == "val_files" else SAME_SETTINGS
            raise PneumoError(
                f"{member.path} has {key} = {_described(key, value, first[key])}, but {members[0].path} has "
                f"{_described(key, first[key], value)}: ensemble members must share it; {advice}"
            )


def recorded_root(model: LoadedModel) -> Path:
    """Where the run's validation files lie by its config: the manifest's folder or data.root."""
    data = model.meta.config.get("data", {})
    manifest = Manifest.from_config(data.get("manifest"))
    if manifest is not None:
        return manifest.folder
    if data.get("root") is None:
        raise PneumoError(f"{model.path} records no data.root; give the data's folder with --data-root")
    return Path(data["root"])


def validation_probabilities(model: LoadedModel, samples: Sequence[Sample]) -> torch.Tensor:
    """P(positive) of every validation film. An unreadable film stops: the threshold must rest
    on all the films it is chosen for."""
    rows = predict(model, [s.path for s in samples], progress=len(samples) > 16)
    failed = [r for r in rows if r.error]
    if failed:
        raise PneumoError(
            f"validation film {failed[0].path} cannot be read ({failed[0].error}); restore it: the "
            f"ensemble's threshold is chosen on all {len(rows)} validation films"
        )
    return torch.tensor([r.p_positive for r in rows])


def make_ensemble(
    args: Sequence[str | Path], out: str | Path, data_root: str | Path | None = None
) -> dict[str, dict[str, Any]]:
    """Average the members ``args`` name (``member_paths``) into the checkpoint ``out``.

    The threshold is chosen, by the members' rule, on the ensemble's probabilities of their
    shared validation films under ``data_root`` (default: the first member's ``recorded_root``).
    Returns the validation figures of each member (by file) and of ``"ensemble"``.
    """
    paths = member_paths(args)
    out = Path(out)
    if out.resolve() in {p.resolve() for p in paths}:
        raise PneumoError(f"--out {out} is one of the members; write the ensemble to a new file")
    members = [load_model(p) for p in paths]
    check_members(members)
    first = members[0]
    root = Path(data_root) if data_root is not None else recorded_root(first)
    samples = validation_samples(first.meta, root, first.path)
    # 1 for a film of the positive class, whatever its place in the classes
    targets = torch.tensor([int(s.label == first.positive_index) for s in samples])
    figures = {
        str(m.path): evaluation_metrics(validation_probabilities(m, samples), targets, m.threshold)
        for m in members
    }
    meta = replace(
        first.meta,
        ensemble={"members": [{"file": str(m.path), "threshold": m.threshold} for m in members]},
        calibration=None,
    )
    net = Ensemble([m.net for m in members]).eval()
    # Through the ensemble network itself, not the mean of the members' probabilities above:
    # the two differ in the last bits, and a film on the threshold must get the label here that
    # pneumo-predict will give it. Calibrated on these films as a trained run is, then scored
    # again as served.
    raw = validation_probabilities(LoadedModel(net, meta, out), samples)
    margins = margin_from_probability(raw.double())
    assert isinstance(margins, torch.Tensor)  # a tensor in, a tensor out
    temperature = fit_temperature(margins, targets)
    meta = replace(
        meta, calibration={"method": "temperature", "temperature": temperature, "fitted_on": "validation"}
    )
    probs = validation_probabilities(LoadedModel(net, meta, out), samples)
    threshold = threshold_by_rule(meta, probs, targets)
    figures["ensemble"] = evaluation_metrics(probs, targets, threshold)
    checkpoint = {"pneumo": replace(meta, threshold=threshold).as_dict(), "state_dict": net.state_dict()}
    AtomicCheckpointIO().save_checkpoint(checkpoint, out)
    return figures
