"""Training-time augmentation on decoded uint8 tensors (torchvision transforms v2)."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision.transforms import v2


def train_augmentation(
    image_size: int,
    scale: Sequence[float] = (0.8, 1.0),
    degrees: float = 10.0,
    translate: float = 0.05,
    brightness: float = 0.2,
    contrast: float = 0.2,
    hflip: bool = False,
) -> v2.Compose:
    """Mild geometric and exposure changes that keep a chest film plausible.

    Horizontal flips are off by default: they put the heart on the wrong side, which a
    real radiograph never shows.
    """
    steps: list = [
        v2.RandomResizedCrop(image_size, scale=tuple(scale), ratio=(0.9, 1.1), antialias=True),
        v2.RandomAffine(degrees=degrees, translate=(translate, translate)),
        v2.ColorJitter(brightness=brightness, contrast=contrast),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)
