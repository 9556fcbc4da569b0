"""Exporting a trained model to ONNX or TorchScript, checked against PyTorch.

The exported model takes ``input_0`` (N x 3 x H x W float, ImageNet-normalised, see
preprocessing.json) and returns ``output_0`` (N x 2 class probabilities, softmax
included): the layout jetson-inference's imagenet tools load.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pneumo.artifacts.output import atomic_path, write_text_atomically
from pneumo.data.preprocess import load_image, to_model_input
from pneumo.errors import PneumoError
from pneumo.serving.loading import LoadedModel, load_model

TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "input_0", "output_0"


class ProbabilityModel(nn.Module):
    """The classifier followed by calibration and a softmax, so deployments get the calibrated
    probabilities pneumo-predict gives: ``softmax(net(x) / temperature)``."""

    def __init__(self, net: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x) / self.temperature, dim=1)

    @classmethod
    def of(cls, model: LoadedModel) -> ProbabilityModel:
        """The deployable form of a loaded checkpoint, its calibration included."""
        return cls(model.net, model.meta.temperature).eval()


def export_onnx(model: LoadedModel, path: Path) -> Path:
    """Write an ONNX model with a dynamic batch axis (needs the ``export`` extra)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise PneumoError(
            f"ONNX export needs onnx, onnxscript and onnxruntime: pip install 'pneumo[export]' ({err})"
        ) from err
    example = torch.zeros(2, 3, model.image_size, model.image_size)
    for name in ("onnxscript", "onnx_ir"):  # their INFO lines drown the user's output
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ProbabilityModel.of(model),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            verbose=False,
            external_data=False,
        )
    return path


def export_torchscript(model: LoadedModel, path: Path) -> Path:
    """Write a scripted module with the same contract as the ONNX model."""
    with warnings.catch_warnings():  # TorchScript is deprecated upstream but still what many runtimes load
        warnings.simplefilter("ignore")
        torch.jit.script(ProbabilityModel.of(model)).save(str(path))
    return path


def _run_onnx(path: Path, batch: torch.Tensor) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError as err:
        raise PneumoError("checking the ONNX model needs onnxruntime: pip install 'pneumo[export]'") from err
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: batch.contiguous().numpy()})[0]


def _run_torchscript(path: Path, batch: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.jit.load(str(path)).eval()(batch).numpy()


RUNNERS = {"onnx": _run_onnx, "torchscript": _run_torchscript}
WRITERS = {"onnx": (export_onnx, "resnet18.onnx"), "torchscript": (export_torchscript, "resnet18.pt")}


def check_batch(model: LoadedModel, images: Sequence[Path]) -> torch.Tensor:
    """Normalised model input from real images, or seeded noise when none are at hand."""
    if images:
        raw = torch.stack([load_image(p, model.image_size) for p in images])
        return to_model_input(raw, model.mean, model.std).contiguous()
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, model.image_size, model.image_size, generator=generator)


def max_difference(model: LoadedModel, fmt: str, path: Path, batch: torch.Tensor) -> float:
    """Largest absolute difference between exported and PyTorch probabilities (NaN if any is NaN)."""
    with torch.inference_mode():
        expected = ProbabilityModel.of(model)(batch).numpy()
    return float(np.abs(RUNNERS[fmt](path, batch) - expected).max())


def check_parity(model: LoadedModel, fmt: str, path: Path, batch: torch.Tensor) -> float:
    """Run the export and PyTorch on ``batch``; raise unless they agree within ``TOLERANCE``."""
    difference = max_difference(model, fmt, path, batch)
    if not difference <= TOLERANCE:  # written so that NaN fails too
        raise PneumoError(
            f"the exported {fmt} model disagrees with PyTorch: max |dp| = {difference:.2e} "
            f"(limit {TOLERANCE:.0e}); it was not written"
        )
    return difference


def export(
    ckpt: str | Path, fmt: str, out_dir: str | Path, check_images: Sequence[Path] = ()
) -> tuple[Path, float]:
    """Export ``ckpt`` to ``out_dir`` with labels.txt and preprocessing.json; verify it.

    Returns the model path and the largest probability difference; raises if it is
    above ``TOLERANCE``, and then writes nothing: the model is checked under a temporary
    name and only renamed into place once it agrees with PyTorch.
    """
    if fmt not in WRITERS:
        raise PneumoError(f"--format must be one of {', '.join(WRITERS)}, got {fmt!r}")
    model = load_model(ckpt)
    out_dir = Path(out_dir)
    writer, file_name = WRITERS[fmt]
    spec = {
        **model.preprocessing,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "output_meaning": (
            f"N x {len(model.classes)} softmax probabilities, column i for classes[i]; "
            f"p = column {model.positive_index}, the positive class {model.meta.positive_class}"
        ),
        "classes": model.classes,
    }
    with atomic_path(out_dir / file_name) as partial:
        difference = check_parity(model, fmt, writer(model, partial), check_batch(model, check_images))
        # the files that describe the model first, the model last: a failure never pairs a new
        # model with an earlier export's labels or preprocessing
        write_text_atomically(out_dir / "labels.txt", "".join(f"{c}\n" for c in model.classes))
        spec_text = json.dumps(spec, indent=2, allow_nan=False) + "\n"
        write_text_atomically(out_dir / "preprocessing.json", spec_text)
    return out_dir / file_name, difference
