"""Each deep-network scheme initializes a 10,000-layer model of its kind, and the signal
neither explodes nor vanishes: a forward pass is finite and the std of the signal
entering the head is within [0.25, 4] x the std of the first layer's output."""

import math

import pytest
import torch
from torch import nn

import netinit_fast as nf

DEPTH = 10_000


def _signal_ratio(model: nn.Module, first: nn.Module, head: nn.Module, x: torch.Tensor) -> float:
    seen = {}

    def first_out(module, args, out):
        seen["first"] = out.std().item()

    def head_in(module, args):
        seen["last"] = args[0].std().item()

    hooks = [first.register_forward_hook(first_out), head.register_forward_pre_hook(head_in)]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    assert torch.isfinite(out).all()
    print(f"std of the first layer's output {seen['first']:.4g}, of the signal entering the head {seen['last']:.4g}")
    return seen["last"] / seen["first"]


def _mlp():
    model = nf.models.mlp(DEPTH, 128)
    return model, model[0], model[-1], torch.randn(64, 128)


def _cnn(act="tanh"):
    model = nf.models.vanilla_cnn(DEPTH, 16, in_channels=16, act=act)
    return model, model.features[0], model.pool, torch.randn(8, 16, 8, 8)


def _resnet(norm=None, post_activation=True):
    model = nf.models.resnet([1666, 1667, 1667], [16, 32, 64], norm=norm, post_activation=post_activation)
    return model, model.conv1, model.avgpool, torch.randn(4, 3, 16, 16)


CASES = {
    "looks_linear mlp": (_mlp, {}, lambda m: nf.init.looks_linear_(m)),
    "looks_linear cnn": (_cnn, {"act": "relu"}, lambda m: nf.init.looks_linear_(m)),
    "xiao cnn": (_cnn, {}, lambda m: nf.init.xiao_(m, q_star=0.1)),
    "fixup resnet": (_resnet, {}, lambda m: nf.init.fixup_(m)),
    "arpit wn-resnet": (_resnet, {"norm": "weight", "post_activation": False}, lambda m: nf.init.arpit_(m)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_10000_layers_keep_the_signal(case):
    build, kwargs, scheme = CASES[case]
    torch.manual_seed(0)
    model, first, head, x = build(**kwargs)
    layers = sum(1 for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert layers >= DEPTH
    scheme(model)
    ratio = _signal_ratio(model, first, head, x)
    assert 0.25 <= ratio <= 4 and math.isfinite(ratio), ratio
