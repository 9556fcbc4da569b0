"""The network: a torchvision ResNet18 with a two-class head, and its pretrained weights."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models import ResNet18_Weights, resnet18
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from pneumo.artifacts.checkpoint import NUM_CLASSES, safe_torch_load
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


def _first_line(err: BaseException) -> str:
    """An exception's first line, short, without any advice it carries on loading unsafely."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]


def _tensor_state(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded weights file: a state dict itself, or one under ``state_dict`` or
    ``model`` (Lightning, timm and most training scripts); refuse anything else in one line."""
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise PneumoError(
            f"model.weights file {path} holds no state dict (a mapping of layer names to tensors); "
            "save the network's weights with torch.save(net.state_dict(), path)"
        )
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise PneumoError(
            f"model.weights file {path} holds no tensors under its keys (e.g. {next(iter(state))!r}); "
            "save the network's weights with torch.save(net.state_dict(), path)"
        )
    return tensors


def _imagenet_state_dict(weights: str) -> dict[str, torch.Tensor]:
    """ImageNet weights by torchvision name (downloaded once) or from a local file.

    A file is read with ``weights_only=True``: tensors and plain data only. One that holds
    pickled objects (a whole saved model) is refused without being unpickled.
    """
    if Path(weights).suffix in (".pth", ".pt", ".ckpt", ".bin", ".tar") or Path(weights).exists():
        path = Path(weights).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "not found"
            raise PneumoError(f"model.weights file {what}: {path}")
        state = safe_torch_load(
            path,
            f"model.weights file {path}",
            unsafe="(a whole saved model, not its weights), which pneumo does not unpickle: unpickling "
            "can run arbitrary code. Save the weights alone with torch.save(model.state_dict(), path), "
            "or use model.weights=IMAGENET1K_V1",
            damaged="is not a PyTorch weights file",
        )
        return _tensor_state(state, path)
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
            f"could not download the {weights} weights ({type(err).__name__}: {_first_line(err)}). Without "
            f"network, copy {file_name} from {enum.url} to ~/.cache/torch/hub/checkpoints/ "
            f"or pass model.weights=/path/to/{file_name}; or train from scratch with "
            "model.weights=null"
        ) from None


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def load_backbone_weights(net: nn.Module, weights: str) -> None:
    """Load pretrained ResNet18 weights into ``net``, all layers but the classifier head.

    Weights of another network (a ResNet34 or 50, a DenseNet, a model of other input channels)
    are refused in one line naming the first layer that does not fit, before any is loaded.
    """
    state = _imagenet_state_dict(weights)
    state = {k.removeprefix("net.").removeprefix("module."): v for k, v in state.items()}
    state = {
        k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    # BatchNorm's step counters are not weights: torchvision's ImageNet files predate them, and
    # loading leaves the network's own
    own = {
        k: v
        for k, v in net.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    shared = [k for k in own if k in state]
    if not shared:
        raise PneumoError(
            f"model.weights={weights} holds none of a ResNet18's layers (its {len(state)} tensors are "
            f"named e.g. {next(iter(state), 'nothing')!r}): weights of another network; use ResNet18 "
            "weights (torchvision's resnet18), or model.weights=null"
        )
    misfits = [k for k in shared if state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if misfits or missing or unexpected:
        if misfits:
            first = misfits[0]
            detail = (
                f"{len(misfits)} of its tensors have other shapes (e.g. {first}: {_shape(state[first])} in "
                f"the file, {_shape(own[first])} in a ResNet18)"
            )
        else:
            parts = []
            if missing:
                parts.append(f"it lacks {len(missing)} of a ResNet18's tensors (e.g. {missing[0]})")
            if unexpected:
                parts.append(f"it has {len(unexpected)} tensors a ResNet18 does not (e.g. {unexpected[0]})")
            detail = " and ".join(parts)
        raise PneumoError(
            f"model.weights={weights} does not fit a ResNet18: {detail}; it holds another network's "
            "weights (a ResNet34 or 50, say): use ResNet18 weights, or model.weights=null"
        )
    net.load_state_dict(state, strict=False)


def compile_backend(setting: bool | str | None) -> str | None:
    """The ``torch.compile`` backend that ``model.compile`` asks for; ``None`` for eager.

    ``true`` means inductor, PyTorch's code generator for CPU and GPU; a backend name
    (``aot_eager``, ``cudagraphs``, ...) is passed on as it is (``pneumo.training.settings``
    checks that this PyTorch has it).
    """
    if setting in (None, False):
        return None
    return "inductor" if setting is True else str(setting)


def compile_network(net: nn.Module, backend: str) -> None:
    """Compile ``net``'s forward in place (``nn.Module.compile``).

    In place, not ``torch.compile(net)``: the module stays the same object, so its
    ``state_dict`` keys, checkpoints, export and DDP see the plain network. The first batches
    of each mode (training, evaluation) pay the compilation.
    """
    net.compile(backend=backend)


def folded_for_inference(net: nn.Module) -> nn.Module:
    """A copy of ``net`` for inference only: every BatchNorm folded into the convolution before
    it (torch's ``fuse_conv_bn_eval``: the running statistics and affine scale become the
    convolution's weights and bias), in channels-last layout, without gradients. The same
    function of the input as ``net`` in eval mode, to float rounding, with a layer less per
    convolution. ``net`` itself stays as trained: export, Grad-CAM (which hooks its named layers)
    and checkpoints read it.

    The pairs are those of torchvision's ResNet (the stem, every block's ``convN``/``bnN``, each
    ``downsample``), found wherever one sits (an ensemble's members); a network holding any
    other BatchNorm is refused rather than served half folded.
    """
    folded = copy.deepcopy(net).eval().requires_grad_(False)
    for module in folded.modules():
        if isinstance(module, (ResNet, BasicBlock, Bottleneck)):
            for index in (1, 2, 3):
                conv, bn = getattr(module, f"conv{index}", None), getattr(module, f"bn{index}", None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    setattr(module, f"conv{index}", fuse_conv_bn_eval(conv, bn))
                    setattr(module, f"bn{index}", nn.Identity())
            downsample = getattr(module, "downsample", None)
            if isinstance(downsample, nn.Sequential) and len(downsample) == 2:
                conv, bn = downsample
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    downsample[0], downsample[1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    left = [name for name, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise PneumoError(
            f"cannot fold the BatchNorm layers {', '.join(left[:3])} for serving: not a ResNet's"
        )
    return folded.to(memory_format=torch.channels_last).requires_grad_(False)


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
