"""The network: a torchvision ResNet18 with a two-class head, and its pretrained weights."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from pneumo.artifacts.checkpoint import NUM_CLASSES
from pneumo.errors import PneumoError


def build_resnet18(num_classes: int = NUM_CLASSES) -> nn.Module:
    """An untrained torchvision ResNet18 whose last layer has ``num_classes`` outputs."""
    net = resnet18(weights=None)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


def resnet18_classifier(weights: str | None = None) -> nn.Module:
    """The network a run trains: ``build_resnet18`` with ``weights`` (a torchvision name or a
    local file, ``load_backbone_weights``; ``None``: from scratch) in channels-last layout."""
    net = build_resnet18(NUM_CLASSES)
    if weights:
        load_backbone_weights(net, weights)
    return net.to(memory_format=torch.channels_last)


def _imagenet_state_dict(weights: str) -> dict[str, torch.Tensor]:
    """ImageNet weights by torchvision name (downloaded once) or from a local file."""
    if Path(weights).suffix in (".pth", ".pt", ".ckpt", ".bin") or Path(weights).exists():
        path = Path(weights).expanduser()
        if not path.is_file():
            raise PneumoError(f"model.weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise PneumoError(f"model.weights file {path} is not a PyTorch state dict: {err}") from err
        return state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        enum = ResNet18_Weights[weights]
    except KeyError:
        names = ", ".join(w.name for w in ResNet18_Weights)
        raise PneumoError(
            f"model.weights={weights!r} is neither a file nor a torchvision weight name ({names}); "
            "use null to train from scratch"
        ) from None
    try:
        # the file's name carries the start of its SHA-256, checked before it is read, and
        # only tensors are unpickled: a tampered or hostile download is refused
        return enum.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as err:
        file_name = Path(enum.url).name
        raise PneumoError(
            f"could not download the {weights} weights ({type(err).__name__}: {err}). Without "
            f"network, copy {file_name} from {enum.url} to ~/.cache/torch/hub/checkpoints/ "
            f"or pass model.weights=/path/to/{file_name}; or train from scratch with "
            "model.weights=null"
        ) from err


def load_backbone_weights(net: nn.Module, weights: str) -> None:
    """Load pretrained ResNet18 weights into ``net``, all layers but the classifier head."""
    state = _imagenet_state_dict(weights)
    state = {k.removeprefix("net.").removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise PneumoError(
            f"model.weights={weights} does not fit a ResNet18: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


def compile_backend(setting: bool | str | None) -> str | None:
    """The ``torch.compile`` backend that ``model.compile`` asks for; ``None`` for eager.

    ``true`` means inductor, PyTorch's code generator for CPU and GPU; a backend name
    (``aot_eager``, ``cudagraphs``, ...) is passed on as it is.
    """
    if setting in (None, False):
        return None
    backend = "inductor" if setting is True else str(setting)
    known = torch.compiler.list_backends(exclude_tags=())
    if backend not in known:
        raise PneumoError(
            f"model.compile={setting!r} is not valid: use false, true (inductor) or a torch.compile "
            f"backend ({', '.join(torch.compiler.list_backends())})"
        )
    return backend


def compile_network(net: nn.Module, backend: str) -> None:
    """Compile ``net``'s forward in place (``nn.Module.compile``).

    In place, not ``torch.compile(net)``: the module stays the same object, so its
    ``state_dict`` keys, checkpoints, export and DDP see the plain network. The first batches
    of each mode (training, evaluation) pay the compilation.
    """
    net.compile(backend=backend)


def positive_probability(logits: torch.Tensor, positive_index: int, temperature: float = 1.0) -> torch.Tensor:
    """P(positive class) from the network's logits: the softmax column of ``positive_index`` of
    the logits divided by ``temperature`` (calibration; 1: the network's own probabilities)."""
    return (logits / temperature).softmax(dim=1)[:, positive_index]


class Ensemble(nn.Module):
    """Several trained networks as one, whose output is the log of their mean probabilities.

    ``forward`` returns ``log(mean_k softmax(net_k(x)))``, computed as the logsumexp of the
    members' log-softmax minus log K, so that no small probability underflows. Its softmax is
    exactly the members' mean probability: it takes the place of a network's logits wherever
    they are read (``positive_probability``, ``inference.probabilities``, the export's
    ``ProbabilityModel`` softmax, TorchScript), and an exported ONNX model averages the members
    inside its graph.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.log_k = math.log(len(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = [torch.log_softmax(member(x), dim=1) for member in self.members]
        return torch.logsumexp(torch.stack(scores), dim=0) - self.log_k
