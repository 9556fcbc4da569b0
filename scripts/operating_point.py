"""Which threshold rule holds when the films shift? Each rule's threshold on trained runs'
validation films, as they are and put through acquisition shifts, and across runs.

    python scripts/operating_point.py RUN_A RUN_B --data-root DATA/chest_xray [--json out.json]

For each run (its checkpoints/best.ckpt, or a checkpoint file) the validation films the run
recorded are scored as they are ("clean") and in ``--draws`` seeded copies each put through the
acquisition terms of ``data/augment=strong`` (film gamma, detector blur, sensor noise, a blanked
border band; no zoom, rotation, shift or exposure): the "stress" set. Every rule of
``pneumo.model.threshold`` then picks its threshold on the clean films, and the table shows
where it lands (probability and log-odds), its clean figures, and its figures on the stress
set; last, how far each rule's threshold moves between runs and when picked on the stress set
instead. Everything is on training data: the runs' own validation films.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from pneumo.data.preprocess import load_image, to_model_input, to_unit
from pneumo.data.provenance import validation_samples
from pneumo.data.transforms import BatchAugment
from pneumo.model.calibration import fit_temperature
from pneumo.model.metrics import metrics_at
from pneumo.model.network import positive_probability
from pneumo.model.threshold import choose_threshold
from pneumo.serving.ensemble import BEST, recorded_root
from pneumo.serving.loading import LoadedModel, load_model

# data/augment=strong's acquisition terms alone
STRESS = BatchAugment(
    scale=(1.0, 1.0),
    degrees=0,
    translate=0,
    brightness=0,
    contrast=0,
    gamma=0.3,
    blur=0.5,
    noise=0.02,
    erase_border=0.3,
)


def scores(
    model: LoadedModel, images: torch.Tensor, draws: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """P(positive) of the uint8 films as they are, and of ``draws`` stressed copies, draw-major
    (all films of draw 0, then all of draw 1, ...), each as the checkpoint serves it."""
    generator = torch.Generator().manual_seed(seed)

    def served(x: torch.Tensor) -> torch.Tensor:
        logits = model.served_net(to_model_input(x, model.mean, model.std))
        return positive_probability(logits, model.positive_index, model.meta.temperature)

    clean: list[torch.Tensor] = []
    stressed: list[list[torch.Tensor]] = [[] for _ in range(draws)]
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            x = to_unit(images[start : start + 64])
            clean.append(served(x))
            for draw in range(draws):
                stressed[draw].append(served(STRESS(x.clone(), generator)))
    return torch.cat(clean), torch.cat([torch.cat(draw) for draw in stressed])


def logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def stress_youden(clean, positive, stressed, positive_stressed, target: float) -> float:
    """The cut-off with the best sensitivity + specificity on the stress set among those that
    keep the clean films' sensitivity at ``target``: the candidate rule that looks at shifted films."""
    ceiling = choose_threshold(clean, positive, "sensitivity", target)  # the highest cut-off allowed
    candidates = sorted({p for p in stressed.tolist() if p <= ceiling} | {ceiling})
    best, best_j = ceiling, -1.0
    for cut in candidates:
        figures = metrics_at(stressed, positive_stressed, cut)
        j = figures["sensitivity"] + figures["specificity"]
        if j > best_j:
            best, best_j = cut, j
    return best


def rules(target: float) -> dict:
    """Candidate rules: name -> f(clean, positive) giving a threshold on the clean films."""
    found = {
        f"sensitivity {target}": lambda p, y: choose_threshold(p, y, "sensitivity", target),
        "sensitivity 0.95": lambda p, y: choose_threshold(p, y, "sensitivity", 0.95),
        "youden": lambda p, y: choose_threshold(p, y, "youden"),
        f"plateau {target}": lambda p, y: choose_threshold(p, y, "plateau", target),
        "plateau 0.95": lambda p, y: choose_threshold(p, y, "plateau", 0.95),
        "plateau 0.95 tol 0.01": lambda p, y: choose_threshold(p, y, "plateau", 0.95, 0.01),
        "fixed 0.5": lambda p, y: 0.5,
    }
    return found


def study(path: Path, data_root: Path | None, draws: int, target: float) -> dict:
    """Every rule's threshold on one run's validation films, and its figures clean and stressed."""
    path = path / BEST if path.is_dir() else path
    model = load_model(path)
    root = data_root or recorded_root(model)
    samples = validation_samples(model.meta, root, path)
    images = torch.stack([load_image(s.path, model.image_size) for s in samples])
    positive = torch.tensor([int(s.label == model.positive_index) for s in samples])
    clean, stressed = scores(model, images, draws)
    positive_stressed = positive.repeat(draws)
    found = {}
    for name, rule in rules(target).items():
        cut = rule(clean, positive)
        found[name] = {"threshold": cut, "threshold_on_stress": rule(stressed, positive_stressed)}
    cut = stress_youden(clean, positive, stressed, positive_stressed, target)
    found[f"stress youden, clean sens {target}"] = {"threshold": cut, "threshold_on_stress": cut}
    cut = stress_youden(clean, positive, stressed, positive_stressed, 0.95)
    found["stress youden, clean sens 0.95"] = {"threshold": cut, "threshold_on_stress": cut}
    for rule in found.values():
        cut = rule["threshold"]
        rule["logit"] = logit(cut)
        rule["clean"] = {
            k: metrics_at(clean, positive, cut)[k] for k in ("acc", "sensitivity", "specificity")
        }
        rule["stress"] = {
            k: metrics_at(stressed, positive_stressed, cut)[k] for k in ("acc", "sensitivity", "specificity")
        }
    quantiles = torch.tensor([0.5, 0.9, 0.97, 1.0])

    def spread(p: torch.Tensor) -> list[float]:
        return [round(v, 4) for v in torch.quantile(p.double(), quantiles.double()).tolist()]

    margins = torch.logit(clean.double().clamp(1e-12, 1 - 1e-12))
    return {
        "checkpoint": str(path),
        "films": len(samples),
        "stored_threshold": model.threshold,
        "temperature": fit_temperature(margins, positive),
        "normal_q50_q90_q97_max": {
            "clean": spread(clean[positive == 0]),
            "stress": spread(stressed[positive_stressed == 0]),
        },
        "pneumonia_q50_q90_q97_max": {
            "clean": spread(clean[positive == 1]),
            "stress": spread(stressed[positive_stressed == 1]),
        },
        "rules": found,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or checkpoints")
    parser.add_argument("--data-root", type=Path, default=None, help="default: each run's data.root")
    parser.add_argument("--draws", type=int, default=4, help="stressed copies of each validation film")
    parser.add_argument("--target-sensitivity", type=float, default=0.97)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    results = [study(run, args.data_root, args.draws, args.target_sensitivity) for run in args.runs]
    print(
        "| run | rule | threshold | log-odds | clean sens | clean spec | stress sens | stress spec "
        "| stress acc | picked on stress |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for number, result in enumerate(results, 1):
        for method, rule in result["rules"].items():
            c, s = rule["clean"], rule["stress"]
            print(
                f"| {number} | {method} | {rule['threshold']:.3f} | {rule['logit']:+.2f} "
                f"| {c['sensitivity']:.3f} | {c['specificity']:.3f} | {s['sensitivity']:.3f} "
                f"| {s['specificity']:.3f} | {s['acc']:.3f} | {rule['threshold_on_stress']:.3f} |"
            )
    for number, result in enumerate(results, 1):
        print(
            f"run {number}: {result['checkpoint']}; normal {result['normal_q50_q90_q97_max']}; "
            f"pneumonia {result['pneumonia_q50_q90_q97_max']}"
        )
    print("\nhow far each rule's threshold moves, in log-odds:")
    for method in results[0]["rules"]:
        picks = [r["rules"][method]["logit"] for r in results]
        between = max(picks) - min(picks) if len(picks) > 1 else float("nan")
        stress = statistics.mean(
            abs(logit(r["rules"][method]["threshold_on_stress"]) - r["rules"][method]["logit"])
            for r in results
        )
        print(f"  {method:<34} between runs {between:.2f}   clean -> stress (mean) {stress:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
