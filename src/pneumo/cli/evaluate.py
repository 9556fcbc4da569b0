"""pneumo-eval: a checkpoint on a labelled split, read the way a screening test is read.

    pneumo-eval ckpt_path=RUN/checkpoints/best.ckpt data.root=DATA_ROOT [data.split=val]
        [cam=true] [compare_ckpt_path=OTHER.ckpt] [card.authors="..."]

Writes metrics.json, errors.csv, model_card.md, confusion_matrix.png, roc.png,
reliability.png and decision_curve.png into the run directory and logs the pictures to
TensorBoard (``pneumo.evaluation.report``). Figures are given at the threshold chosen on
validation during training (stored in the checkpoint) and at 0.5 (exploratory), with 95 %
intervals, and per acquisition group (the file-naming families of Kermany's archive) at the
stored threshold. The console summary is ``pneumo.cli.tables``'s.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from pneumo.cli.overrides import writable_run_dir
from pneumo.cli.tables import print_table
from pneumo.errors import exit_on_user_error
from pneumo.evaluation.report import ReportOptions, evaluate
from pneumo.training.settings import config_errors


def report_options(cfg: DictConfig) -> ReportOptions:
    """The report's settings from the config (each with its default when absent)."""
    intervals = cfg.get("intervals") or {}
    card = OmegaConf.to_container(cfg.card, resolve=True) if cfg.get("card") is not None else {}
    assert isinstance(card, dict)
    return ReportOptions(
        level=float(intervals.get("level", 0.95)),
        draws=int(intervals.get("draws", 2000)),
        seed=int(intervals.get("seed", 0)),
        cam=bool(cfg.get("cam", False)),
        compare_ckpt_path=cfg.get("compare_ckpt_path"),
        card={str(k): v for k, v in card.items()},
    )


@writable_run_dir  # a run directory that cannot be written: one line, before Hydra makes it
@hydra.main(version_base="1.3", config_path="pkg://pneumo.conf", config_name="eval")
@exit_on_user_error
@config_errors  # a missing ckpt_path (or any config error) in one line
def main(cfg: DictConfig) -> float:
    """Evaluate; return the AUROC."""
    output_dir = Path(cfg.paths.output_dir)
    metrics = evaluate(
        cfg.ckpt_path,
        cfg.data.root,
        cfg.data.split,
        output_dir,
        cfg.data.batch_size,
        cfg.tta,
        report_options(cfg),
    )
    print_table(metrics)
    Console().print(f"written to {output_dir}", highlight=False)
    return metrics["auroc"]


if __name__ == "__main__":
    main()
