"""pneumo-ensemble: several trained models averaged into one checkpoint.

    pneumo-ensemble outputs/kermany_cpu/multiruns/DATE --out ensemble.ckpt
    pneumo-ensemble runA/checkpoints/best.ckpt runB/ runC/ --out ensemble.ckpt --data-root DATA

Each argument is a checkpoint, a run directory (its checkpoints/best.ckpt) or a sweep
directory (the checkpoints/best.ckpt of every run in it); at least two members in all. They
must share classes, positive class, preprocessing, validation films and threshold rule: train
them alike but for the seed, e.g. pneumo-train -m experiment=kermany_cpu seed=1,2,3
(or train and average in one command: pneumo-train experiment=kermany_cpu ensemble=seeds).
The ensemble's threshold is chosen on those validation films (found under --data-root, by
default the data.root the first member was trained on) by the members' own rule, and the
figures of the ensemble and of each member on them are printed. The file is used like any
checkpoint by pneumo-eval, pneumo-predict and pneumo-export.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import nn

from pneumo import DISCLAIMER
from pneumo.checkpoint import AtomicCheckpointIO, CheckpointMeta, LoadedModel, load_model
from pneumo.data.dataset import Sample
from pneumo.data.manifest import Manifest
from pneumo.errors import PneumoError, exit_on_user_error, exit_with, printable
from pneumo.inference import predict
from pneumo.metrics import evaluation_metrics
from pneumo.provenance import refuse_unrecorded, validation_samples
from pneumo.threshold import choose_threshold

log = logging.getLogger(__name__)

BEST = Path("checkpoints") / "best.ckpt"
# Figures printed for the ensemble and each member, all at their own thresholds.
SHOWN = ("auroc", "sensitivity", "specificity")


class Ensemble(nn.Module):
    """Several trained networks as one, whose output is the log of their mean probabilities.

    ``forward`` returns ``log(mean_k softmax(net_k(x)))``, computed as the logsumexp of the
    members' log-softmax minus log K, so that no small probability underflows. Its softmax is
    exactly the members' mean probability: it takes the place of a network's logits wherever
    they are read (``network.positive_probability``, ``inference.probabilities``, the export's
    ``ProbabilityModel`` softmax, TorchScript), and an exported ONNX model averages the members
    inside its graph.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.log_k = math.log(len(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = [torch.log_softmax(member(x), dim=1) for member in self.members]
        return torch.logsumexp(torch.stack(scores), dim=0) - self.log_k


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
    }


def _shown(key: str, value: Any, other: Any) -> str:
    """A setting's value for a one-line message: validation files by count and an example."""
    if key != "val_files":
        return repr(value)
    only = sorted(set(value) - set(other))
    return f"{len(value)} files" + (f", {only[0][0]} among them" if only else "")


# What to do about a setting members do not share. The validation films follow the seed
# unless data.seed is fixed or the holdout does not depend on it.
SAME_SETTINGS = "train them alike but for the seed (pneumo-train -m ... seed=1,2,3)"
SAME_FILMS = "train them on the same data with data.val_holdout=earliest, or with one data.seed"


def check_members(members: Sequence[LoadedModel]) -> None:
    """Refuse members that cannot be averaged: an ensemble among them, or one whose shared
    settings differ from the first member's (naming the file, the key and both values)."""
    first = shared_settings(members[0].meta)
    for member in members:
        member.meta.refuse_ensemble(member.path, "an ensemble member", "give its members instead")
        refuse_unrecorded(member.meta, member.path, "make it an ensemble member")
        for key, value in shared_settings(member.meta).items():
            if value == first[key]:
                continue
            advice = SAME_FILMS if key == "val_files" else SAME_SETTINGS
            raise PneumoError(
                f"{member.path} has {key} = {_shown(key, value, first[key])}, but {members[0].path} has "
                f"{_shown(key, first[key], value)}: ensemble members must share it; {advice}"
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
    return torch.tensor([r.p_pneumonia for r in rows])


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
    )
    net = Ensemble([m.net for m in members]).eval()
    # Through the ensemble network itself, not the mean of the members' probabilities above:
    # the two differ in the last bits, and a film on the threshold must get the label here that
    # pneumo-predict will give it.
    probs = validation_probabilities(LoadedModel(net, meta, out), samples)
    rule = shared_settings(meta)
    threshold = choose_threshold(
        probs, targets, rule["model.threshold_method"], rule["model.target_sensitivity"]
    )
    figures["ensemble"] = evaluation_metrics(probs, targets, threshold)
    checkpoint = {"pneumo": replace(meta, threshold=threshold).as_dict(), "state_dict": net.state_dict()}
    AtomicCheckpointIO().save_checkpoint(checkpoint, out)
    return figures


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
    for key in SHOWN:
        table.add_column(key, justify="right")
    rows = [(f"member {number}", figures[name]) for number, name in enumerate(names, 1)]
    for label, row in [*rows, ("ensemble", figures["ensemble"])]:
        table.add_row(label, f"{row['threshold']:.3f}", *(f"{row[k]:.4f}" for k in SHOWN))
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
        resumed = [o.input_line.split("=", 1)[1] for o in overrides if o.key_or_group == "ckpt_path"]
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


def _wiring_check(job: Path) -> bool:
    """Whether a sweep's job ran under ``trainer.fast_dev_run``, which keeps no checkpoints."""
    saved = job / ".hydra" / "config.yaml"
    return saved.is_file() and bool(
        OmegaConf.select(OmegaConf.load(saved), "trainer.fast_dev_run", throw_on_resolution_failure=False)
    )


def build_sweep_ensemble(sweep: Path) -> bool:
    """Average the jobs of ``sweep`` into ``sweep/ensemble.ckpt``. False, with one logged line, when
    that is not possible; True also when every job was a wiring check (nothing to average)."""
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir() and not d.name.startswith("."))
    if jobs and all(_wiring_check(job) for job in jobs):
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


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Command line of pneumo-ensemble."""
    parser = argparse.ArgumentParser(
        prog="pneumo-ensemble",
        description=__doc__,
        epilog=DISCLAIMER,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "members",
        nargs="+",
        metavar="CKPT_OR_RUN_DIR",
        help="checkpoints, run directories or sweep directories (two members or more in all)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the ensemble checkpoint to write")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where the members' validation films lie (default: the data.root of the first member)",
    )
    args = parser.parse_args(argv)
    write_ensemble(args.members, args.out, args.data_root)


if __name__ == "__main__":
    main(sys.argv[1:])
