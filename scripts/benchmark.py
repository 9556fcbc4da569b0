#!/usr/bin/env python3
"""Training and prediction throughput: pneumo beside a plain PyTorch loop and the model's limit.

    python scripts/benchmark.py --data data/chest_xray/train --images 1024 --image-size 128

Modes, each in its own process so peak memory is its own:
  model_bound  training steps on real images already decoded and normalised in memory: the ceiling
  baseline     a plain loop the original trainer's way: ImageFolder, PIL decode and
               RandomResizedCrop every epoch, fp32, NCHW, DataLoader workers
  pneumo       the project's DataModule + LightningModule + Trainer, as pneumo-train runs them
Train throughput is images/s over one epoch after a warm-up epoch (pneumo: its second
epoch's time/train_epoch_s). Also: prediction on full-resolution JPEGs (pneumo-predict's
code path), pneumo's epoch time at 1/4, 1/2 and all of the images, and the memory of
caching the whole train split. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("data/chest_xray/train")
DEFAULT_PREDICT = REPO / "data" / "sample"


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its (largest) child, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def pick_images(data: Path, n: int, seed: int = 0) -> list[Path]:
    """A seeded sample of ``n`` images from ``data/CLASS/*``: one of each class first, then any."""
    files = sorted(p for p in data.glob("*/*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if not files:
        raise SystemExit(f"error: no images in {data}/CLASS/ (use --data)")
    random.Random(seed).shuffle(files)
    firsts = list({p.parent.name: p for p in reversed(files)}.values())
    files = firsts + [p for p in files if p not in firsts]
    return (files * (n // len(files) + 1))[:n]


def link_tree(files: list[Path], root: Path, split: str = "train") -> Path:
    """Lay ``files`` out as root/split/CLASS/NAME with symbolic links (names kept unique)."""
    for index, path in enumerate(files):
        target = root / split / path.parent.name / f"{index:05d}_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())
    return root


def new_model(device: str) -> torch.nn.Module:
    from pneumo.network import build_resnet18

    return build_resnet18(2).to(device, memory_format=torch.channels_last).train()


def autocast(device: str, precision: str):
    enabled = precision == "bf16"
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=enabled)


def run_model_bound(args: argparse.Namespace) -> dict:
    """Training steps on the same real images, decoded and normalised in memory beforehand.

    Real pixels matter: on this CPU a step on random-noise input ran ~20 % slower than on
    X-rays, so noise would understate the ceiling.
    """
    from pneumo.data.preprocess import load_image, to_model_input

    model = new_model(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    files = pick_images(args.data, args.images)
    steps = max(1, args.images // args.batch_size)
    batches = []
    for step in range(steps):
        chunk = files[step * args.batch_size : (step + 1) * args.batch_size]
        images = torch.stack([load_image(p, args.image_size) for p in chunk])
        labels = torch.tensor([int(p.parent.name == "PNEUMONIA") for p in chunk])
        batches.append((to_model_input(images).to(args.device), labels.to(args.device)))

    def epoch() -> None:
        for x, y in batches:
            with autocast(args.device, args.precision):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if args.device == "cuda":
            torch.cuda.synchronize()

    epoch()  # warm-up
    start = time.perf_counter()
    epoch()
    return {"images_per_s": steps * args.batch_size / (time.perf_counter() - start)}


def run_baseline(args: argparse.Namespace) -> dict:
    """The original trainer's loop: decode, crop and normalise every image every epoch."""
    from torchvision import datasets, transforms

    with tempfile.TemporaryDirectory() as tmp:
        root = link_tree(pick_images(args.data, args.images), Path(tmp))
        transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(args.image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            ]
        )
        dataset = datasets.ImageFolder(str(root / "train"), transform)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers
        )
        model = new_model(args.device).to(memory_format=torch.contiguous_format)  # fp32 NCHW, as it was
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)

        def epoch() -> int:
            seen = 0
            for images, labels in loader:
                images, labels = images.to(args.device), labels.to(args.device)
                with autocast(args.device, args.precision):
                    loss = torch.nn.functional.cross_entropy(model(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                seen += len(labels)
            if args.device == "cuda":
                torch.cuda.synchronize()
            return seen

        epoch()  # warm-up
        start = time.perf_counter()
        seen = epoch()
        return {"images_per_s": seen / (time.perf_counter() - start)}


def pneumo_epoch(args: argparse.Namespace, n_images: int) -> dict:
    """Two epochs of pneumo-train on ``n_images``; the second epoch's training time."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pneumo.train import compose_config, train

    with tempfile.TemporaryDirectory() as tmp:
        root = link_tree(pick_images(args.data, n_images), Path(tmp) / "data")
        link_tree(pick_images(args.data, args.batch_size, seed=1), root, split="val")
        overrides = [
            f"data.root={root}",
            f"data.image_size={args.image_size}",
            f"data.batch_size={args.batch_size}",
            f"data.num_workers={args.pneumo_workers}",
            "data.min_val_images=1",
            "model.weights=null",
            "trainer.max_epochs=2",
            "trainer.limit_val_batches=1",
            "callbacks.progress_bar=null",
            "callbacks.early_stopping=null",
            f"trainer.accelerator={args.device}",
            f"trainer.precision={'bf16-mixed' if args.precision == 'bf16' else '32-true'}",
        ]
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        train(compose_config(overrides, run_dir))
        total = time.perf_counter() - start
        events = EventAccumulator(str(run_dir / "tensorboard"))
        events.Reload()
        seconds = events.Scalars("time/train_epoch_s")[-1].value
        first = events.Scalars("time/train_epoch_s")[0].value
    return {
        "images_per_s": n_images / seconds,
        "epoch_s": seconds,
        "first_epoch_s": first,
        "run_s": total,
    }


def run_pneumo(args: argparse.Namespace) -> dict:
    return pneumo_epoch(args, args.images)


def run_scaling(args: argparse.Namespace) -> dict:
    """pneumo's steady epoch time at 1/4, 1/2 and all of ``--images``."""
    sizes = [args.images // 4, args.images // 2, args.images]
    return {"epoch_s": {str(n): pneumo_epoch(args, n)["epoch_s"] for n in sizes}}


def run_predict(args: argparse.Namespace) -> dict:
    """pneumo-predict's path on full-resolution JPEGs: decode, resize, classify."""
    from pneumo.checkpoint import CheckpointMeta, LoadedModel
    from pneumo.data.preprocess import preprocessing_spec
    from pneumo.inference import collect_images, predict
    from pneumo.network import build_resnet18

    files = collect_images([args.predict_images])
    files = (files * (args.predict_count // len(files) + 1))[: args.predict_count]
    meta = CheckpointMeta(["NORMAL", "PNEUMONIA"], "PNEUMONIA", preprocessing_spec(args.image_size))
    model = LoadedModel(build_resnet18().eval(), meta, Path("-"))
    predict(model, files[: args.batch_size], args.batch_size)  # warm-up
    start = time.perf_counter()
    rows = predict(model, files, args.batch_size)
    return {"images_per_s": len(rows) / (time.perf_counter() - start), "images": len(rows)}


def run_cache_full(args: argparse.Namespace) -> dict:
    """Memory and time of decoding the whole train split into pneumo's uint8 cache at 224 px."""
    from pneumo.data.dataset import XrayDataset, scan_split

    samples = scan_split(args.data, ["NORMAL", "PNEUMONIA"])
    start = time.perf_counter()
    dataset = XrayDataset(samples, 224, threads=2)
    return {
        "images": len(dataset),
        "cache_mb": dataset.decoded.nbytes / 2**20,
        "build_s": time.perf_counter() - start,
    }


MODES = {
    "model_bound": run_model_bound,
    "baseline": run_baseline,
    "pneumo": run_pneumo,
    "predict": run_predict,
    "scaling": run_scaling,
    "cache_full": run_cache_full,
}


def run_in_child(mode: str, argv: list[str]) -> dict:
    """Run one mode in a fresh interpreter; return its JSON result (peak memory included)."""
    done = subprocess.run([sys.executable, __file__, *argv, "--only", mode], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"error: mode {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CLASS/ image folders")
    parser.add_argument("--images", type=int, default=1024, help="training images per epoch")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    parser.add_argument("--pneumo-workers", type=int, default=0, help="data.num_workers for pneumo")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--predict-images", type=Path, default=DEFAULT_PREDICT, help="full-size JPEGs")
    parser.add_argument("--predict-count", type=int, default=64)
    parser.add_argument("--modes", default="model_bound,baseline,pneumo,predict,scaling,cache_full")
    parser.add_argument("--only", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA GPU on this machine; use --device cpu")
    if not args.data.is_dir():
        parser.error(f"--data {args.data}: no such folder (it needs CLASS/ image folders)")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.only:
        result = MODES[args.only](args)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    results = {mode: run_in_child(mode, argv) for mode in args.modes.split(",")}
    settings = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "precision": args.precision,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "images": args.images,
        "threads": args.threads,
        "baseline_workers": args.workers,
        "pneumo_workers": args.pneumo_workers,
    }
    ratios = {}
    if {"pneumo", "baseline"} <= results.keys():
        ratios["pneumo/baseline"] = results["pneumo"]["images_per_s"] / results["baseline"]["images_per_s"]
    if {"pneumo", "model_bound"} <= results.keys():
        ratios["pneumo/model_bound"] = (
            results["pneumo"]["images_per_s"] / results["model_bound"]["images_per_s"]
        )
    print(f"settings: {json.dumps(settings)}")
    print(f"{'mode':<12} {'images/s':>9} {'peak MB':>8}  notes")
    for mode, result in results.items():
        rate = f"{result['images_per_s']:9.1f}" if "images_per_s" in result else f"{'-':>9}"
        notes = {k: v for k, v in result.items() if k not in ("images_per_s", "peak_rss_mb")}
        print(f"{mode:<12} {rate} {result['peak_rss_mb']:8.0f}  {json.dumps(notes)}")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    print(json.dumps({"settings": settings, "results": results, "ratios": ratios}))


if __name__ == "__main__":
    main(sys.argv[1:])
