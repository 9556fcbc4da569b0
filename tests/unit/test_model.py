import urllib.error

import pytest
import torch
from torchvision.models import resnet18

from pneumo.errors import PneumoError
from pneumo.model.network import Ensemble, folded_for_inference, resnet18_classifier


def test_weights_from_a_local_file_are_loaded(tmp_path):
    reference = resnet18(weights=None)  # stands in for ImageNet weights: 1000-class head
    torch.nn.init.normal_(reference.conv1.weight)
    path = tmp_path / "resnet18-local.pth"
    torch.save(reference.state_dict(), path)
    net = resnet18_classifier(str(path))
    assert torch.equal(net.conv1.weight, reference.conv1.weight)
    assert torch.equal(net.layer4[1].bn2.running_mean, reference.layer4[1].bn2.running_mean)
    assert net.fc.out_features == 2


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(PneumoError, match="model.weights file not found"):
        resnet18_classifier(str(tmp_path / "absent.pth"))


def test_unknown_weight_name_lists_the_choices():
    with pytest.raises(PneumoError, match="IMAGENET1K_V1"):
        resnet18_classifier("IMAGENET_V9")


def test_failed_download_says_how_to_work_offline(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PneumoError, match=r"resnet18-f37072fd\.pth.*model\.weights=null"):
        resnet18_classifier("IMAGENET1K_V1")


def test_weights_without_batchnorm_step_counters_load(tmp_path):
    # torchvision's ImageNet files predate BatchNorm's num_batches_tracked: they must load as before
    reference = resnet18(weights=None)
    torch.nn.init.normal_(reference.conv1.weight)
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18-2017.pth"
    torch.save(state, path)
    net = resnet18_classifier(str(path))
    assert torch.equal(net.conv1.weight, reference.conv1.weight)


def _trained_looking(seed: int) -> torch.nn.Module:
    """A ResNet18 in eval mode whose BatchNorm statistics and scales are far from their
    defaults, as a trained network's are: folding the defaults would hide a wrong formula."""
    torch.manual_seed(seed)
    net = resnet18_classifier()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.2, 3.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


def test_the_served_network_folds_batchnorm_and_gives_the_same_logits():
    for net in (_trained_looking(0), Ensemble([_trained_looking(1), _trained_looking(2)]).eval()):
        before = {k: v.clone() for k, v in net.state_dict().items()}
        folded = folded_for_inference(net)
        x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            expected, served = net(x), folded(x)
        assert torch.allclose(served, expected, rtol=1e-4, atol=1e-4)
        assert (served - expected).abs().max() > 0  # computed otherwise, not the same layers
        # every BatchNorm went into its convolution; the network as trained is untouched
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) >= 20
        assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_the_fused_optimizer_makes_the_same_update_as_torchs_default_loop(tmp_path):
    from pneumo.training.build import build
    from tests.helpers import FAST, SAMPLE, make_cfg

    _, module, _ = build(make_cfg(tmp_path, [*FAST, f"data.root={SAMPLE}"]))
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    # five steps of each on the same network and gradients: the same weights to float rounding
    nets = [resnet18_classifier() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = [p.detach().clone() for p in nets[0].parameters()]
    optimizers = [
        torch.optim.AdamW(n.parameters(), lr=1e-3, weight_decay=5e-4, fused=f)
        for n, f in zip(nets, (True, None))
    ]
    torch.manual_seed(0)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in nets[0].parameters()]
        for net, opt in zip(nets, optimizers):
            for param, grad in zip(net.parameters(), grads):
                param.grad = grad.clone()
            opt.step()
    assert max((a - b).abs().max() for a, b in zip(nets[0].parameters(), start)) > 1e-3  # they moved
    for fused, loop in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.allclose(fused, loop, rtol=1e-5, atol=1e-6)


def test_a_resume_runs_the_configured_kernel_whatever_the_checkpoint_was_saved_with(tmp_path):
    from pneumo.training.build import build
    from tests.helpers import FAST, SAMPLE, make_cfg

    _, module, _ = build(make_cfg(tmp_path, [*FAST, f"data.root={SAMPLE}"]))
    fused = module.configure_optimizers()
    fused = fused["optimizer"] if isinstance(fused, dict) else fused
    # a checkpoint of earlier code: torch's default AdamW loop, after one step
    loop = torch.optim.AdamW(module.parameters(), lr=3e-4)
    for param in module.parameters():
        param.grad = torch.ones_like(param)
    loop.step()
    fused.load_state_dict(loop.state_dict())
    assert all(group["fused"] is True for group in fused.param_groups)
    fused.step()  # the fused kernel takes the loop's state
    assert all(int(fused.state[p]["step"]) == 2 for p in module.parameters())


def test_an_optimizer_without_a_fused_kernel_is_refused_in_one_line():
    from pneumo.errors import PneumoError
    from pneumo.training.settings import _check_fused_optimizer

    rmsprop = {"optimizer": {"_target_": "torch.optim.RMSprop", "fused": True}}
    with pytest.raises(PneumoError, match=r"torch.optim.RMSprop takes no fused argument; drop it"):
        _check_fused_optimizer(rmsprop, {})
    _check_fused_optimizer({"optimizer": {"_target_": "torch.optim.RMSprop"}}, {})  # left out: fine
    adamw = {"optimizer": {"_target_": "torch.optim.AdamW", "fused": True}}
    _check_fused_optimizer(adamw, {"precision": "32-true", "gradient_clip_val": 1.0})
    for precision in ("16-mixed", "bf16-mixed", "auto"):
        with pytest.raises(PneumoError, match=rf"gradient_clip_val with trainer.precision={precision} needs"):
            _check_fused_optimizer(adamw, {"precision": precision, "gradient_clip_val": 1.0})
    # what Lightning itself does with a fused optimizer and clipping under mixed precision
    from lightning.pytorch.plugins.precision import MixedPrecision

    fused = torch.optim.AdamW(resnet18_classifier().parameters(), fused=True)
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        MixedPrecision("bf16-mixed", "cpu").clip_gradients(fused, 1.0)
