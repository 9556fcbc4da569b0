"""A model directory as NVIDIA jetson-inference's tools expect it, written from a checkpoint:
model_best.pth.tar (torchvision ResNet18 weights with arch, resolution and num_classes),
labels.txt (one class per line, in the model's order) and resnet18.onnx."""

from __future__ import annotations

from pathlib import Path

import torch

from pneumo.artifacts.checkpoint import network_state_dict, read_checkpoint
from pneumo.artifacts.output import atomic_path
from pneumo.serving.export import export
from pneumo.serving.loading import load_model


def write_model_dir(ckpt: Path, model_dir: Path) -> list[Path]:
    """Write model_best.pth.tar, labels.txt and resnet18.onnx (with its checks) into ``model_dir``.

    model_best.pth.tar follows jetson-inference's train.py: torchvision ResNet18 weights
    under ``state_dict`` with ``arch``, ``resolution``, ``num_classes`` and ``epoch``.
    """
    meta = load_model(ckpt).meta  # refuses a diverged or malformed checkpoint before writing
    meta.refuse_ensemble(
        ckpt, "model_best.pth.tar", "use one of its members (pneumo-export writes the ensemble's ONNX)"
    )
    checkpoint = read_checkpoint(ckpt)
    best = model_dir / "model_best.pth.tar"
    with atomic_path(best) as partial, partial.open("wb") as file:
        torch.save(
            {
                "epoch": checkpoint.get("epoch", 0),
                "arch": "resnet18",
                "resolution": meta.image_size,
                "num_classes": len(meta.classes),
                "classes": list(meta.classes),
                "state_dict": network_state_dict(checkpoint),
            },
            file,
        )
    onnx_path, _ = export(ckpt, "onnx", model_dir)
    return [best, model_dir / "labels.txt", onnx_path]
