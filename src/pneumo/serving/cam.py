"""Grad-CAM heatmaps (captum) over the X-ray, to show what drove a prediction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from pneumo.data.preprocess import load_image, read_grey, to_model_input
from pneumo.errors import PneumoError
from pneumo.serving.loading import LoadedModel


def refuse_ensemble(model: LoadedModel) -> None:
    """Grad-CAM reads one network's last block, and an ensemble has one per member: refused."""
    model.meta.refuse_ensemble(model.path, "Grad-CAM (--cam)", "run --cam with one of its members")


def grad_cam(model: LoadedModel, image: torch.Tensor) -> np.ndarray:
    """Grad-CAM of the positive class's logit on the last ResNet block, scaled to 0..1.

    ``image`` is one ``1 x S x S`` uint8 tensor; the map has the network's input size.
    """
    refuse_ensemble(model)
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError as err:
        raise PneumoError("--cam needs captum: pip install 'pneumo[cam]'") from err
    x = to_model_input(image.unsqueeze(0), model.mean, model.std).requires_grad_(True)
    attribution = LayerGradCam(model.net, model.net.layer4).attribute(
        x, target=model.positive_index, relu_attributions=True
    )
    heat = LayerAttribution.interpolate(attribution, x.shape[-2:], interpolate_mode="bilinear")
    heat = heat.detach()[0, 0].clamp(min=0).numpy()
    return heat / heat.max() if heat.max() > 0 else heat


def overlay(grey: Image.Image, heat: np.ndarray, alpha: float = 0.4) -> Image.Image:
    """Blend a 0..1 heatmap (jet colours) over the grey X-ray at the X-ray's own size."""
    heat_img = Image.fromarray((heat * 255).astype(np.uint8)).resize(grey.size, Image.Resampling.BILINEAR)
    colours = colormaps["jet"](np.asarray(heat_img) / 255.0)[..., :3]
    base = np.asarray(grey.convert("RGB"), dtype=np.float32) / 255.0
    blended = (1 - alpha) * base + alpha * colours
    return Image.fromarray((blended * 255).clip(0, 255).astype(np.uint8))


def write_cams(model: LoadedModel, files: Sequence[Path], out_dir: Path) -> list[Path]:
    """Write ``<name>_cam.png`` per image into ``out_dir``; names stay unique per folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    seen: set[str] = set()
    for path in files:
        stem = path.stem if path.stem not in seen else f"{path.parent.name}_{path.stem}"
        seen.add(stem)
        heat = grad_cam(model, load_image(path, model.image_size))
        target = out_dir / f"{stem}_cam.png"
        overlay(read_grey(path), heat).save(target)
        written.append(target)
    return written
