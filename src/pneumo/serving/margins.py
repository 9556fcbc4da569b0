"""A model's uncalibrated margins on films: what its temperature and threshold are fitted to.

The margin of a film is ``logit_positive - logit_negative`` of the network's output (for an
ensemble, of its log mean probabilities), computed as pneumo serves it: the film decoded by
``preprocess.load_image``, normalised by ``to_model_input``, one float32 forward pass of the
served network (BatchNorm folded: the validation step's figures to float rounding), no
augmentation, no temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from pneumo.data.preprocess import BadImageError, load_image, to_model_input, to_unit
from pneumo.errors import PneumoError
from pneumo.serving.loading import LoadedModel


def film_margins(model: LoadedModel, files: Sequence[str | Path], batch_size: int = 32) -> torch.Tensor:
    """The float32 margin of every file, in order. An unreadable file stops, naming it: a
    temperature or threshold fitted on these films must rest on all of them."""
    margins = []
    net = model.served_net.float()
    positive = model.positive_index
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images = []
        for path in chunk:
            try:
                images.append(load_image(path, model.image_size))
            except BadImageError as err:
                raise PneumoError(
                    f"{err}; restore or remove it: the figures are computed on every film"
                ) from None
        x = to_model_input(to_unit(torch.stack(images)), model.mean, model.std)
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            logits = net(x).float()
        margins.append(logits[:, positive] - logits[:, 1 - positive])
    return torch.cat(margins) if margins else torch.zeros(0)
