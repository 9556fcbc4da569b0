"""Mixup (Zhang et al. 2018): each training batch blended with a shuffled copy of itself."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Mix(NamedTuple):
    """The labels of a mixup batch: each image is ``lam`` of a film labelled ``targets_a`` and
    ``1 - lam`` of one labelled ``targets_b``."""

    targets_a: torch.Tensor
    targets_b: torch.Tensor
    lam: float

    @property
    def major(self) -> torch.Tensor:
        """Each image's label with the larger share."""
        return self.targets_a if self.lam >= 0.5 else self.targets_b


def mix_batch(
    images: torch.Tensor, targets: torch.Tensor, alpha: float, rng: np.random.Generator
) -> tuple[torch.Tensor, Mix | None]:
    """Blend the batch with a shuffled copy of itself by one share ``lam ~ Beta(alpha, alpha)``.
    ``alpha == 0`` leaves the batch as it is (no ``Mix``).

    ``lam`` and the shuffle come from ``rng`` alone, which training seeds with the run's seed,
    the epoch and the batch: a resumed run continues the draws, and every device draws the same.
    """
    if alpha == 0:
        return images, None
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(len(images))).to(images.device)
    # a Python float keeps the images' dtype and channels_last layout
    mixed = lam * images + (1.0 - lam) * images[perm]
    return mixed, Mix(targets, targets[perm], lam)
