#!/usr/bin/env python3
"""What the decoded-image cache costs and saves: memory to build it, time to the first batch, epochs.

    python scripts/cache_benchmark.py --data ../shared/data/chest_xray/train --image-size 224

Each mode runs in a fresh interpreter, so its peak memory and start-up are its own:
  build_memory, build_disk    decode the films into data.cache=memory, or into a new
                              data.cache=disk folder: seconds and peak resident memory
  first_batch_memory,         a sweep's jobs 1 and 2 (two pneumo-train runs in one process,
  first_batch_disk            as Hydra's basic launcher runs them), then a second run in a new
                              process: seconds from the start of each to its first training
                              batch; the disk runs share one new cache folder
  epoch_memory, epoch_disk    the second epoch's training time, reading from each cache
``--images 0`` uses every film of ``--data``; otherwise a seeded sample of that many, linked
into a temporary folder. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import psutil
from benchmark import link_tree, pick_images

MODES = (
    "build_memory",
    "build_disk",
    "first_batch_memory",
    "first_batch_disk",
    "epoch_memory",
    "epoch_disk",
)


class FirstBatch(L.Callback):
    """Records the seconds from ``start`` (a ``time.time()``) to the first training batch."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.seconds: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.seconds is None:
            self.seconds = time.time() - self.start


def data_root(args: argparse.Namespace, tmp: Path) -> Path:
    """``--data`` itself, or a linked sample of ``--images`` of its films."""
    return link_tree(pick_images(args.data, args.images), tmp / "data", "train") if args.images else args.data


def peak_rss_mb() -> float:
    """Peak resident memory of this process, or of its largest child if larger, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, child) / 1024


def overrides(args: argparse.Namespace, root: Path, cache: str, cache_dir: Path) -> list[str]:
    return [
        f"data.root={root}",
        f"data.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}",
        f"data.cache={cache}",
        f"data.cache_dir={cache_dir}",
        "model.weights=null",
        "callbacks.progress_bar=null",
        "callbacks.early_stopping=null",
    ]


def run_build(args: argparse.Namespace, cache: str) -> dict:
    """Decode every film of the data root into ``cache``."""
    from pneumo.data.cache import decoded_images
    from pneumo.data.datamodule import XrayDataModule

    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        samples = XrayDataModule(str(data_root(args, Path(tmp)))).split_samples()
        paths = [s.path for part in samples for s in part]
        start = time.perf_counter()
        images = decoded_images(paths, args.image_size, cache, Path(tmp) / "cache", threads=args.threads)
        return {
            "images": len(images.paths),
            "cache_mb": images.nbytes / 2**20,
            "build_s": time.perf_counter() - start,
        }


def run_first_batch(args: argparse.Namespace, cache: str) -> dict:
    """Jobs 1 and 2 of a sweep in this process, then a second run in a new one."""
    from pneumo.training.config import compose_config
    from pneumo.training.fit import train

    process_start = psutil.Process().create_time()
    quick = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        shared = overrides(args, data_root(args, Path(tmp)), cache, Path(tmp) / "cache") + quick
        seconds = {}
        for job, start in (("sweep_job_1", process_start), ("sweep_job_2", None)):
            timer = FirstBatch(start or time.time())
            train(compose_config(shared, Path(tmp) / job), callbacks=[timer])
            seconds[job] = timer.seconds
        second = subprocess.run(
            [sys.executable, __file__, "--data", str(args.data), "--second-run", json.dumps(shared), tmp],
            capture_output=True,
            text=True,
        )
        if second.returncode != 0:
            raise SystemExit(f"error: the second run failed:\n{second.stderr[-3000:]}")
        seconds["second_run"] = json.loads(second.stdout.strip().splitlines()[-1])["seconds"]
    return {"first_batch_s": seconds}


def second_run(shared: list[str], tmp: str) -> None:
    """A new process's run: print the seconds from its start to its first batch."""
    from pneumo.training.config import compose_config
    from pneumo.training.fit import train

    timer = FirstBatch(psutil.Process().create_time())
    train(compose_config(shared, Path(tmp) / "run_2"), callbacks=[timer])
    print(json.dumps({"seconds": timer.seconds}))


def run_epoch(args: argparse.Namespace, cache: str) -> dict:
    """Two epochs; the second one's training time (the first builds the cache)."""
    from pneumo.training.config import compose_config
    from pneumo.training.fit import train

    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        cfg = overrides(args, data_root(args, Path(tmp)), cache, Path(tmp) / "cache")
        two_epochs = [*cfg, "trainer.max_epochs=2", "trainer.limit_val_batches=1"]
        results = train(compose_config(two_epochs, Path(tmp) / "run"))
    return {"epoch_s": results["time/train_epoch_s"]}


def run_mode(args: argparse.Namespace, mode: str) -> dict:
    kind, cache = mode.rsplit("_", 1)
    return {"build": run_build, "first_batch": run_first_batch, "epoch": run_epoch}[kind](args, cache)


def in_child(mode: str, argv: list[str]) -> dict:
    """Run one mode in a fresh interpreter; its JSON result, peak memory included."""
    done = subprocess.run([sys.executable, __file__, *argv, "--only", mode], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"error: mode {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=Path("data/chest_xray/train"), help="folder of CLASS/ folders"
    )
    parser.add_argument("--images", type=int, default=0, help="films to use (0: all of --data)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="decoding threads of the build modes")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="where the temporary data and caches go (default: /tmp)"
    )
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--only", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--second-run", nargs=2, metavar=("OVERRIDES", "TMP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"--data {args.data}: no such folder (it needs CLASS/ image folders)")
    if args.cache_dir is not None:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.second_run:
        second_run(json.loads(args.second_run[0]), args.second_run[1])
        return
    if args.only:
        print(json.dumps({**run_mode(args, args.only), "peak_rss_mb": peak_rss_mb()}))
        return
    results = {mode: in_child(mode, argv) for mode in args.modes.split(",")}
    for mode, result in results.items():
        print(f"{mode:20s} {json.dumps(result)}")
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
