"""The model directory NVIDIA jetson-inference's tools expect, written from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from pneumo.checkpoint import network_state_dict, read_checkpoint
from pneumo.export import export


def write_model_dir(ckpt: Path, model_dir: Path) -> list[Path]:
    """Write model_best.pth.tar, labels.txt and resnet18.onnx (with its checks) into ``model_dir``.

    model_best.pth.tar follows jetson-inference's train.py: torchvision ResNet18 weights
    under ``state_dict`` with ``arch``, ``resolution``, ``num_classes`` and ``epoch``.
    """
    checkpoint = read_checkpoint(ckpt)
    meta = checkpoint["pneumo"]
    best = model_dir / "model_best.pth.tar"
    torch.save(
        {
            "epoch": checkpoint.get("epoch", 0),
            "arch": "resnet18",
            "resolution": meta["preprocessing"]["image_size"],
            "num_classes": len(meta["classes"]),
            "classes": list(meta["classes"]),
            "state_dict": network_state_dict(checkpoint),
        },
        best,
    )
    onnx_path, _ = export(ckpt, "onnx", model_dir)
    return [best, model_dir / "labels.txt", onnx_path]
