#!/usr/bin/env python3
"""Training speed as a user waits for it: pneumo beside a plain PyTorch loop and the model's limit.

    python scripts/benchmark.py --data data/chest_xray/train --images 1024 --image-size 128
    python scripts/benchmark.py --data data/chest_xray/train --device cuda --precision bf16 --image-size 224

Every mode trains the same ResNet18 on the same work: --epochs epochs (the first is the
warm-up) of --images training images, each epoch followed by validation on --val-images
images. Each mode runs in a fresh interpreter, timed by wall clock:
  model_bound  training and validation steps on the same images decoded, normalised and on the
               device beforehand: the ceiling. Excludes decoding (done before the first batch),
               augmentation, metrics, logging and checkpoints.
  baseline     a plain loop the original trainer's way: ImageFolder, PIL decode, RandomResizedCrop
               and flip every epoch, NCHW, --workers DataLoader workers; saves model and optimizer
               state after every epoch. Excludes metrics and logging.
  pneumo       pneumo-train itself (DataModule with its default cache, LightningModule, Trainer):
               an epoch is from one epoch's start to the next, so it includes validation, metrics,
               logging, the epoch report and the checkpoint writes (last.ckpt, best.ckpt).
  predict      pneumo-predict's path on full-resolution films (decode, resize, classify);
               excludes loading the checkpoint.
  startup      pneumo-train on the whole --data folder up to its first training batch: imports,
               listing, patient split, cache build and the sanity validation.
A mode may carry variants, joined by "+": compile (model.compile=--compile-backend, inductor
by default, with an empty compile cache, so the first epoch pays what a first run pays), bf16
(bf16 autocast in training; pneumo validates in float32) and films (--images drawn with repetition
from the full-resolution films of --films, which the plain loop decodes every epoch and pneumo
once), and unfused (torch's default per-tensor AdamW loop instead of the fused AdamW that
pneumo's config and every mode use). Modes without +bf16 run at --precision, without +compile
eagerly. Two variants take a
number: +threadsN (N intra-op threads instead of --threads) and +batchN (batch size N instead
of --batch-size), e.g. model_bound+bf16+batch64; a mode with several variants is also compared
with itself without its last one.

The machine's limit, measured first in the launching process: the dense matmul rate
(2048 x 2048 products, fp32 and bf16, the median of five after two warm-ups) and one training
image's FLOPs (forward and backward of pneumo's ResNet18, counted by FlopCounterMode). Each
training mode's images/s x FLOPs per image / the matmul rate in its precision is its fraction
of that limit ("of limit"): 1 would be every FLOP at matmul speed, which convolutions,
BatchNorm and pointwise work do not reach, so it is an upper bound, not a target.

Per mode: train images/s over the last epoch (training images / its wall time), the same
without that epoch's validation ("no-val": training images / (epoch - validation), which keeps
augmentation, metrics, logging and checkpoints), each epoch's validation time, the first
epoch's time, startup (from launching the mode's interpreter to its first training batch),
the whole run's time, and peak memory: the peak PSS of the mode's process and all its children
(DataLoader workers, compile workers) summed, sampled every 0.5 s (PSS splits each shared page
among the processes sharing it, so forked workers' pages count once), and the main process's
own peak RSS. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("data/chest_xray/train")
DEFAULT_FILMS = REPO / "data" / "sample"
DEFAULT_MODES = (
    "model_bound,baseline,pneumo,model_bound+compile,pneumo+compile,model_bound+bf16,baseline+bf16,"
    "pneumo+bf16,baseline+films,pneumo+films,predict,startup"
)
VARIANTS = ("compile", "bf16", "films", "unfused")
# variants with a number: +threadsN (torch's intra-op threads), +batchN (the batch size)
NUMBERED_VARIANTS = re.compile(r"(threads|batch)([1-9][0-9]*)")
MATMUL_SIZE = 2048  # large enough that the matmul runs at the library's full rate
SAMPLE_SECONDS = 0.5  # a sample costs a few ms of one core


# -- memory ----------------------------------------------------------------------------------
def _process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def own_peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: that keeps the peak of the process
    that launched this one (it carries over an exec), so a small mode reported its parent's."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def _pss_kb(pid: int) -> int:
    """Proportional set size of one process in KB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


class PeakMemory:
    """The peak of this process tree's summed PSS, sampled in a thread while the block runs.

    ``peak_mb`` is ``None`` where the kernel offers no ``smaps_rollup`` (not Linux).
    """

    def __init__(self) -> None:
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        """Sample until the block ends, then once more: a block shorter than a period (or a peak
        held at its end) would otherwise be seen only as it started."""
        while True:
            stopping = self._stop.is_set()  # read first: a sample under way as the block ends is not the last
            total = sum(_pss_kb(pid) for pid in _process_tree(os.getpid())) / 1024
            self.peak_mb = max(self.peak_mb or 0.0, total)
            if stopping:
                return
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> PeakMemory:
        if Path("/proc/self/smaps_rollup").exists():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


# -- clocks ----------------------------------------------------------------------------------
class EpochClock(L.Callback):
    """Wall-clock marks of a pneumo-train run: its first training batch, each epoch's start and
    validation time (from ``on_validation_start``, after Lightning has fetched the first
    validation batch, to ``on_validation_end``), its end.

    Hydra builds the instance inside ``pneumo.training.fit.train``, so the marks are kept on the class,
    fresh for each run.
    """

    marks: dict[str, Any] = {}

    def __init__(self) -> None:
        EpochClock.marks = {"first_batch": None, "epoch_starts": [], "val_s": [], "end": None}
        self._val_start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.marks["epoch_starts"].append(time.time())

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.marks["first_batch"] = self.marks["first_batch"] or time.time()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = synchronized_time(pl_module.device)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:  # the sanity check's two batches are no epoch's
            self.marks["val_s"].append(synchronized_time(pl_module.device) - self._val_start)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # checkpoints are written at each train epoch's end (save_on_train_epoch_end), before this
        self.marks["end"] = time.time()


def synchronized_time(device: torch.device | str) -> float:
    """``time.time()`` once the device's queued work is done: on a GPU, kernels run after the
    Python call that queued them, and would otherwise be billed to the next mark's span."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.time()


def timings(
    started: float, first_batch: float, epoch_starts: list[float], end: float, images: int, val_s: list[float]
) -> dict:
    """A mode's figures from its wall-clock marks (``time.time()``; ``started``: its launch) and
    each epoch's validation time (one per epoch: every mode validates every epoch)."""
    bounds = [*epoch_starts, end]
    epochs = [b - a for a, b in zip(bounds, bounds[1:])]
    if len(val_s) != len(epochs):
        raise ValueError(f"{len(val_s)} validation times for {len(epochs)} epochs: one per epoch expected")
    return {
        "images_per_s": images / epochs[-1],
        # the same epoch without its validation: augmentation, metrics, logging, checkpoints stay
        "no_val_images_per_s": images / (epochs[-1] - val_s[-1]),
        "epoch_s": epochs,
        "val_s": val_s,
        "startup_s": first_batch - started,
        "run_s": end - started,
    }


# -- the machine's limit --------------------------------------------------------------------
def matmul_gflops(
    device: str,
    dtype: torch.dtype,
    size: int = MATMUL_SIZE,
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """The machine's dense matmul rate in GFLOP/s: the median of ``repeats`` timed ``size`` x
    ``size`` products in ``dtype`` (bf16 runs on AMX or tensor cores where there are any), after
    two untimed ones that warm the library's kernels and caches."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    seconds = []
    for index in range(repeats + 2):
        synchronized_time(device)
        start = clock()
        a @ b
        synchronized_time(device)
        elapsed = clock() - start
        if index >= 2:
            seconds.append(elapsed)
    return 2 * size**3 / statistics.median(seconds) / 1e9


def training_flops_per_image(image_size: int, batch: int = 2) -> float:
    """FLOPs of one training image at ``image_size``: forward and backward of the ResNet18 as
    pneumo builds it (channels-last), as ``FlopCounterMode`` counts them: convolutions and matrix
    products. BatchNorm, pointwise work and the optimiser step are not counted (a few % of the
    total), so the limit they set is the matmul units', an upper bound."""
    from torch.utils.flop_counter import FlopCounterMode

    from pneumo.model.network import resnet18_classifier

    net = resnet18_classifier().train()
    images = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        net(images).sum().backward()
    return counter.get_total_flops() / batch


def machine_limit(device: str, image_size: int) -> dict[str, float]:
    """The dense matmul rate in fp32 and bf16 and one training image's FLOPs: together, the
    images/s the machine's arithmetic would allow if every FLOP ran at matmul speed."""
    return {
        "matmul_gflops_fp32": matmul_gflops(device, torch.float32),
        "matmul_gflops_bf16": matmul_gflops(device, torch.bfloat16),
        "train_gflop_per_image": training_flops_per_image(image_size) / 1e9,
    }


def mode_precision(mode: str, precision: str) -> str:
    """The precision ``mode`` trains in: bf16 with +bf16 or --precision bf16, fp32 otherwise."""
    return "bf16" if "bf16" in parse_mode(mode)[1] or precision == "bf16" else "fp32"


def limit_fraction(images_per_s: float, limit: dict[str, float], precision: str) -> float:
    """``images_per_s`` as a fraction of the images/s the machine's matmul rate in
    ``precision`` ("fp32" or "bf16") allows: images/s x FLOPs per image / FLOP/s."""
    return images_per_s * limit["train_gflop_per_image"] / limit[f"matmul_gflops_{precision}"]


# -- data ------------------------------------------------------------------------------------
def pick_images(data: Path, n: int, seed: int = 0) -> list[Path]:
    """A seeded sample of ``n`` images from ``data/CLASS/*`` (repeated when fewer): one of each
    class first, then any."""
    files = sorted(p for p in data.glob("*/*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if not files:
        raise SystemExit(f"error: no images in {data}/CLASS/ (use --data)")
    random.Random(seed).shuffle(files)
    firsts = list({p.parent.name: p for p in reversed(files)}.values())
    files = firsts + [p for p in files if p not in firsts]
    return (files * (n // len(files) + 1))[:n]


def link_tree(files: list[Path], root: Path, split: str) -> Path:
    """Lay ``files`` out as root/split/CLASS/NAME with symbolic links (names kept unique)."""
    for index, path in enumerate(files):
        target = root / split / path.parent.name / f"{index:05d}_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())
    return root


def data_tree(args: argparse.Namespace, tmp: Path) -> Path:
    """The mode's training and validation images as DATA/train and DATA/val."""
    root = link_tree(pick_images(args.data, args.images), tmp / "data", "train")
    return link_tree(pick_images(args.data, args.val_images, seed=1), root, "val")


# -- the plain loops -------------------------------------------------------------------------
def new_model(args: argparse.Namespace, memory_format: torch.memory_format) -> torch.nn.Module:
    """The network as pneumo builds it, on the device; compiled in a +compile mode."""
    from pneumo.model.network import build_resnet18, compile_network

    model = build_resnet18().to(args.device, memory_format=memory_format)
    if args.compile:
        compile_network(model, args.compile)
    return model


def autocast(args: argparse.Namespace) -> torch.autocast:
    """bf16 autocast on the device when --precision bf16 (or +bf16) asks for it; a no-op otherwise."""
    return torch.autocast(device_type=args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def plain_loop(
    args: argparse.Namespace,
    model: torch.nn.Module,
    train: Iterable[tuple[torch.Tensor, torch.Tensor]],
    val: Iterable[tuple[torch.Tensor, torch.Tensor]],
    checkpoint: Path | None = None,
) -> dict:
    """--epochs epochs of training on ``train`` and validation on ``val``, timed by wall clock;
    model and optimizer state saved to ``checkpoint`` after each epoch when given."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=args.fused)
    first_batch, epoch_starts, val_s = None, [], []
    for _ in range(args.epochs):
        epoch_starts.append(time.time())
        model.train()
        for images, labels in train:
            first_batch = first_batch or time.time()
            images, labels = images.to(args.device), labels.to(args.device)
            with autocast(args):
                loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        val_start = synchronized_time(args.device)
        with torch.no_grad(), autocast(args):
            for images, _ in val:
                model(images.to(args.device)).float().softmax(dim=1)
        val_s.append(synchronized_time(args.device) - val_start)
        if checkpoint is not None:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
        if args.device == "cuda":
            torch.cuda.synchronize()
    return timings(args.started, first_batch, epoch_starts, time.time(), args.images, val_s)


def decoded_batches(args: argparse.Namespace, files: list[Path]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``files`` decoded as pneumo decodes them, normalised, channels-last, on the device."""
    from pneumo.data.preprocess import load_image, to_model_input

    batches = []
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        images = to_model_input(torch.stack([load_image(p, args.image_size) for p in chunk]))
        labels = torch.tensor([int(p.parent.name == "PNEUMONIA") for p in chunk])
        batches.append((images.to(args.device), labels.to(args.device)))
    return batches


def run_model_bound(args: argparse.Namespace) -> dict:
    """Steps on real images decoded and normalised beforehand (noise input ran ~20 % slower on a CPU)."""
    train = decoded_batches(args, pick_images(args.data, args.images))
    val = decoded_batches(args, pick_images(args.data, args.val_images, seed=1))
    return plain_loop(args, new_model(args, torch.channels_last), train, val)


def run_baseline(args: argparse.Namespace) -> dict:
    """The original trainer's loop: decode, crop and normalise every image every epoch."""
    from torchvision import datasets, transforms

    normalise = [transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    augment = [transforms.RandomResizedCrop(args.image_size), transforms.RandomHorizontalFlip()]
    with tempfile.TemporaryDirectory() as tmp:
        root = data_tree(args, Path(tmp))

        def loader(split: str, steps: list, shuffle: bool) -> torch.utils.data.DataLoader:
            dataset = datasets.ImageFolder(str(root / split), transforms.Compose([*steps, *normalise]))
            return torch.utils.data.DataLoader(
                dataset,
                args.batch_size,
                shuffle=shuffle,
                num_workers=args.workers,
                persistent_workers=args.workers > 0,
            )

        resize = [transforms.Resize((args.image_size, args.image_size))]
        model = new_model(args, torch.contiguous_format)  # NCHW, as it was
        return plain_loop(
            args, model, loader("train", augment, True), loader("val", resize, False), Path(tmp) / "last.pt"
        )


# -- pneumo ----------------------------------------------------------------------------------
def pneumo_overrides(args: argparse.Namespace, root: Path) -> list[str]:
    """pneumo-train's settings for this benchmark; everything else is the default config."""
    overrides = [
        f"data.root={root}",
        f"data.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.pneumo_workers}",
        "model.weights=null",
        f"seed={args.seed}",
        f"model.compile={args.compile or 'false'}",
        f"model.optimizer.fused={str(args.fused).lower()}",
        "callbacks.progress_bar=null",
        "callbacks.early_stopping=null",
        f"+callbacks.epoch_clock._target_={__name__}.EpochClock",
        f"trainer.accelerator={args.device}",
        f"trainer.precision={'bf16-mixed' if args.precision == 'bf16' else '32-true'}",
    ]
    if args.profile_dir:
        overrides += [
            "+trainer.profiler._target_=lightning.pytorch.profilers.SimpleProfiler",
            f"+trainer.profiler.dirpath={args.profile_dir.resolve()}",
            f"+trainer.profiler.filename={args.mode_name}-profile",
        ]
    return overrides


def run_pneumo(args: argparse.Namespace) -> dict:
    """pneumo-train for --epochs epochs; an epoch's time includes its validation and checkpoints."""
    from pneumo.training.config import compose_config
    from pneumo.training.fit import train

    with tempfile.TemporaryDirectory() as tmp:
        root = data_tree(args, Path(tmp))
        overrides = [
            *pneumo_overrides(args, root),
            "data.min_val_images=1",  # validate on DATA/val
            f"trainer.max_epochs={args.epochs}",
        ]
        results = train(compose_config(overrides, Path(tmp) / "run"))
    marks = EpochClock.marks
    figures = timings(
        args.started, marks["first_batch"], marks["epoch_starts"], marks["end"], args.images, marks["val_s"]
    )
    return {**figures, "val_auroc": results.get("val/auroc"), "val_loss": results.get("val/loss")}


def run_startup(args: argparse.Namespace) -> dict:
    """pneumo-train on the whole --data folder, stopped after its first training step."""
    from pneumo.data.dataset import scan_split
    from pneumo.training.config import compose_config
    from pneumo.training.fit import train

    overrides = [
        *pneumo_overrides(args, args.data),
        "++trainer.max_steps=1",
        "trainer.limit_val_batches=2",
        # validation that can measure even on a folder as small as data/sample; the startup's
        # work is the same at any fraction (every film is listed, split and decoded)
        "data.val_fraction=0.25",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        train(compose_config(overrides, Path(tmp) / "run"))
    first_batch = EpochClock.marks["first_batch"]
    return {
        "startup_s": first_batch - args.started,
        "images": len(scan_split(args.data, ["NORMAL", "PNEUMONIA"])),
    }


def run_predict(args: argparse.Namespace) -> dict:
    """pneumo-predict's path on full-resolution films: decode, resize, classify."""
    from pneumo.artifacts.checkpoint import CheckpointMeta
    from pneumo.data.dataset import list_films
    from pneumo.data.preprocess import preprocessing_spec
    from pneumo.model.network import build_resnet18
    from pneumo.serving.inference import predict
    from pneumo.serving.loading import LoadedModel

    files = list_films([args.films]).files
    files = (files * (args.predict_count // len(files) + 1))[: args.predict_count]
    meta = CheckpointMeta(["NORMAL", "PNEUMONIA"], "PNEUMONIA", preprocessing_spec(args.image_size))
    model = LoadedModel(build_resnet18().eval(), meta, Path("-"))
    predict(model, files[: args.batch_size], args.batch_size)  # warm-up
    start = time.perf_counter()
    rows = predict(model, files, args.batch_size)
    figures = {"images_per_s": len(rows) / (time.perf_counter() - start), "images": len(rows)}
    return {**figures, **served_net_rates(model, args.batch_size, args.image_size)}


def served_net_rates(model: Any, batch: int, image_size: int, rounds: int = 7) -> dict[str, float]:
    """The network alone on one channels-last batch, as trained (``net``) and as served
    (``served_net``: BatchNorm folded), timed in turn so that a change of load hits both alike;
    images/s from the median round of each."""
    x = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {"net": [], "served_net": []}
    with torch.inference_mode():
        for _ in range(rounds + 1):  # the first round warms both up and is not counted
            for name, net in (("net", model.net), ("served_net", model.served_net)):
                start = time.perf_counter()
                net(x)
                times[name].append(time.perf_counter() - start)
    return {f"{name}_images_per_s": batch / statistics.median(t[1:]) for name, t in times.items()}


MODES = {
    "model_bound": run_model_bound,
    "baseline": run_baseline,
    "pneumo": run_pneumo,
    "predict": run_predict,
    "startup": run_startup,
}


def parse_mode(name: str) -> tuple[str, list[str]]:
    """``pneumo+compile+bf16`` -> ("pneumo", ["compile", "bf16"]); SystemExit for unknown parts."""
    base, *variants = name.split("+")
    unknown = [v for v in variants if v not in VARIANTS and not NUMBERED_VARIANTS.fullmatch(v)]
    if base not in MODES or unknown:
        raise SystemExit(
            f"error: --modes: {name!r} is not a mode; use one of {', '.join(MODES)}, "
            f"optionally with +{'/+'.join(VARIANTS)}/+threadsN/+batchN"
        )
    return base, variants


def with_variants(args: argparse.Namespace, variants: list[str]) -> argparse.Namespace:
    """``args`` as a mode's variants change them."""
    # the optimizer as pneumo's config has it (fused AdamW); +unfused: torch's default loop
    changed = argparse.Namespace(**vars(args), compile=False, fused="unfused" not in variants)
    if "compile" in variants:
        changed.compile = args.compile_backend
    if "bf16" in variants:
        changed.precision = "bf16"
    if "films" in variants:
        changed.data = args.films
    for variant in variants:
        if numbered := NUMBERED_VARIANTS.fullmatch(variant):
            what, number = numbered.groups()
            setattr(changed, "threads" if what == "threads" else "batch_size", int(number))
    return changed


def run_mode(args: argparse.Namespace) -> dict:
    """Run ``args.only`` in this process; its figures with peak memory."""
    base, variants = parse_mode(args.only)
    mode_args = with_variants(args, variants)
    mode_args.mode_name = args.only
    torch.set_num_threads(mode_args.threads)
    L.seed_everything(args.seed, workers=True)  # the plain loops start where pneumo does
    with PeakMemory() as memory:
        result = MODES[base](mode_args)
    figures = {**result, "peak_pss_mb": memory.peak_mb, "main_rss_mb": own_peak_rss_mb()}
    if args.device == "cuda":
        figures["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


def run_in_child(mode: str, argv: list[str]) -> dict:
    """Run one mode in a fresh interpreter with an empty compile cache; its JSON result."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        command = [sys.executable, __file__, *argv, "--only", mode, "--started", str(time.time())]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"error: mode {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


# -- report ----------------------------------------------------------------------------------
def ratios(results: dict[str, dict]) -> dict[str, float]:
    """pneumo against the plain loop and the ceiling with the same variants, and each variant
    against its plain mode; pneumo against the ceiling also without validation (pneumo validates
    in float32 under +bf16, the ceiling in bf16), which leaves augmentation, metrics, logging
    and checkpoints; and predict's network as served (BatchNorm folded) against it as trained."""
    rate = {mode: r["images_per_s"] for mode, r in results.items() if r.get("images_per_s")}
    no_val = {mode: r["no_val_images_per_s"] for mode, r in results.items() if r.get("no_val_images_per_s")}
    pairs, no_val_pairs = [], []
    for mode in rate:
        base, variants = parse_mode(mode)
        suffix = "".join(f"+{v}" for v in variants)
        if base == "pneumo":
            pairs += [(mode, f"baseline{suffix}"), (mode, f"model_bound{suffix}")]
            no_val_pairs.append((mode, f"model_bound{suffix}"))
        if variants:
            pairs.append((mode, base))
        if len(variants) > 1:  # model_bound+bf16+batch64 against model_bound+bf16
            pairs.append((mode, mode.rsplit("+", 1)[0]))
    served = {
        f"{mode} served_net/net": r["served_net_images_per_s"] / r["net_images_per_s"]
        for mode, r in results.items()
        if r.get("served_net_images_per_s") and r.get("net_images_per_s")
    }
    return {
        **served,
        **{f"{a}/{b}": rate[a] / rate[b] for a, b in pairs if a in rate and b in rate},
        **{
            f"{a}/{b} without validation": no_val[a] / no_val[b]
            for a, b in no_val_pairs
            if a in no_val and b in no_val
        },
    }


def compile_payoff(results: dict[str, dict], compiled: str) -> dict[str, float | None]:
    """The images (epochs x images per epoch) after which the ``compiled`` mode (one with
    +compile) has paid for itself against the same mode run eagerly. pneumo+compile's keys are
    plain, any other's name the mode."""
    eager = "+".join(part for part in compiled.split("+") if part != "compile")
    plain, fast = results.get(eager), results.get(compiled)
    if not plain or not fast:
        return {}
    cost = fast["epoch_s"][0] - plain["epoch_s"][0]
    saved_per_image = 1 / plain["images_per_s"] - 1 / fast["images_per_s"]
    named = "" if compiled == "pneumo+compile" else f" {compiled}"
    return {
        f"compile_first_epoch_extra_s{named}": cost,
        f"compile_break_even_images{named}": cost / saved_per_image if saved_per_image > 0 else None,
    }


def limit_fractions(results: dict[str, dict], limit: dict[str, float], precision: str) -> None:
    """Add to each training mode's figures its images/s as a fraction of the machine's limit in
    the mode's precision (``limit_fraction``)."""
    for mode, figures in results.items():
        if figures.get("images_per_s") and "epoch_s" in figures:
            figures["machine_limit_fraction"] = limit_fraction(
                figures["images_per_s"], limit, mode_precision(mode, precision)
            )


def print_report(settings: dict, limit: dict[str, float], results: dict[str, dict], summary: dict) -> None:
    """The machine's limit, one row per mode, then the ratios, then everything as one JSON line."""

    def cell(value: Any, width: int, fmt: str = ".1f") -> str:
        return f"{value:{width}{fmt}}" if isinstance(value, (int, float)) else f"{'-':>{width}}"

    print(f"settings: {json.dumps(settings)}")
    per_image = limit["train_gflop_per_image"]
    rates = {p: limit[f"matmul_gflops_{p}"] for p in ("fp32", "bf16")}
    print(
        f"machine limit: a training image {per_image:.2f} GFLOP (forward + backward); dense matmul "
        + ", ".join(f"{p} {r:.0f} GFLOP/s ({r / per_image:.0f} images/s)" for p, r in rates.items())
    )
    print(
        f"{'mode':<22} {'img/s':>7} {'no-val':>7} {'epoch s':>8} {'val s':>6} {'1st ep s':>8} "
        f"{'startup s':>9} {'run s':>7} "
        f"{'PSS MB':>7} {'main MB':>7} {'val auroc':>9} {'of limit':>8}"
    )
    for mode, r in results.items():
        last = r["epoch_s"][-1] if "epoch_s" in r else None
        first = r["epoch_s"][0] if "epoch_s" in r else None
        print(
            f"{mode:<22} {cell(r.get('images_per_s'), 7)} {cell(r.get('no_val_images_per_s'), 7)} "
            f"{cell(last, 8)} {cell(r['val_s'][-1] if r.get('val_s') else None, 6)} {cell(first, 8)} "
            f"{cell(r.get('startup_s'), 9)} {cell(r.get('run_s'), 7)} {cell(r.get('peak_pss_mb'), 7, '.0f')} "
            f"{cell(r.get('main_rss_mb'), 7, '.0f')} {cell(r.get('val_auroc'), 9, '.4f')} "
            f"{cell(r.get('machine_limit_fraction'), 8, '.3f')}"
        )
    for name, value in summary.items():
        print(f"{name}: {value:.2f}" if isinstance(value, float) else f"{name}: {value}")
    print(json.dumps({"settings": settings, "machine_limit": limit, "results": results, **summary}))


def compile_setting(backend: str) -> str:
    """--compile-backend, checked as model.compile checks it."""
    from pneumo.errors import PneumoError
    from pneumo.model.network import compile_backend
    from pneumo.training.settings import check_value

    try:
        check_value("model.compile", backend)
        return compile_backend(backend)
    except PneumoError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, checked: folders, device, epochs and modes fail here in one line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CLASS/ image folders")
    parser.add_argument("--films", type=Path, default=DEFAULT_FILMS, help="full-resolution films (CLASS/)")
    parser.add_argument("--images", type=int, default=1024, help="training images per epoch")
    parser.add_argument("--val-images", type=int, default=256, help="validation images per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per mode; the first is the warm-up")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    parser.add_argument("--pneumo-workers", type=int, default=0, help="data.num_workers for pneumo")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32", help="for every mode")
    parser.add_argument(
        "--compile-backend", type=compile_setting, default="inductor", help="what +compile compiles with"
    )
    parser.add_argument("--predict-count", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42, help="weights and shuffling of every mode")
    parser.add_argument(
        "--profile-dir", type=Path, help="write Lightning's SimpleProfiler report of pneumo modes here"
    )
    parser.add_argument("--modes", default=DEFAULT_MODES, help="comma-separated, e.g. pneumo,pneumo+compile")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, default=time.time(), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA GPU on this machine; use --device cpu")
    for name, folder in (("--data", args.data), ("--films", args.films)):
        if not folder.is_dir():
            parser.error(f"{name} {folder}: no such folder (it needs CLASS/ image folders)")
    if args.epochs < 2:
        parser.error(f"--epochs {args.epochs}: use 2 or more (the first is the warm-up)")
    for mode in args.modes.split(","):
        parse_mode(mode)
    return args


def main(argv: list[str]) -> None:
    """Each mode in a fresh interpreter, then the report; with --only, that one mode here."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.only:
        print(json.dumps(run_mode(args)))
        return
    # measured first, before the modes' processes warm or load the machine
    limit = machine_limit(args.device, args.image_size)
    results = {}
    for mode in args.modes.split(","):
        print(f"running {mode} ...", file=sys.stderr, flush=True)
        results[mode] = run_in_child(mode, argv)
    limit_fractions(results, limit, args.precision)
    settings = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        **{
            k: getattr(args, k)
            for k in ("precision", "compile_backend", "image_size", "batch_size", "images", "val_images")
        },
        **{k: getattr(args, k) for k in ("epochs", "seed", "threads", "workers", "pneumo_workers")},
    }
    print_report(settings, limit, results, summarise(results))


def summarise(results: dict[str, dict]) -> dict[str, Any]:
    """The report's closing figures: the ratios, each compiled mode's break-even, and the
    validation AUROC that compiling or bf16 changed against plain pneumo."""
    summary: dict[str, Any] = dict(ratios(results))
    for mode in results:
        if "compile" in parse_mode(mode)[1]:
            summary.update(compile_payoff(results, mode))
    for variant in ("compile", "bf16"):
        if f"pneumo+{variant}" in results and "pneumo" in results:
            got, plain = results[f"pneumo+{variant}"]["val_auroc"], results["pneumo"]["val_auroc"]
            if got is not None and plain is not None:
                summary[f"val_auroc pneumo+{variant} - pneumo"] = got - plain
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
