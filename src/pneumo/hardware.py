"""What the machine offers: which numeric precision trains fastest on it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# CPU flags (Linux /proc/cpuinfo) of units that compute bfloat16 natively
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags; empty where the system does not list them (macOS, Windows)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def auto_precision(
    accelerator: str, flags: set[str] | None = None, cuda_bf16: bool | None = None
) -> tuple[str, str]:
    """The precision ``trainer.precision=auto`` means on this machine, and why, in words.

    bf16-mixed where the device computes bfloat16 natively: a CUDA GPU that supports it, or a
    CPU with AVX-512 BF16 or AMX units (about twice fp32's speed there); 32-true elsewhere,
    where bfloat16 would be emulated and slower. ``flags`` and ``cuda_bf16`` stand in for the
    machine's own (tests).
    """
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_cuda:
        supported = (
            # not counting emulation: a GPU that emulates bfloat16 (T4, V100) trains slower in it
            torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
            if cuda_bf16 is None
            else cuda_bf16
        )
        if supported:
            return "bf16-mixed", "the GPU computes bfloat16"
        return "32-true", "the GPU has no bfloat16 support"
    if accelerator not in ("cpu", "auto"):
        return "32-true", f"accelerator {accelerator}: bfloat16 not assumed"
    found = sorted(set(BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags))
    if found:
        return "bf16-mixed", f"the CPU has bfloat16 units ({', '.join(found)})"
    return "32-true", "the CPU has no bfloat16 units (avx512_bf16 or amx_bf16)"
