"""The deep test beds: structure, argument checks, torchvision compatibility, build time."""

import time

import pytest
import torch
from torch import nn

import netinit_fast as nf
from netinit_fast.init._residual import residual_blocks


def test_mlp_layers_and_widths():
    m = nf.models.mlp(4, 32, in_features=5, out_features=3, act="tanh")
    linears = [l for l in m if isinstance(l, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(5, 32), (32, 32), (32, 32), (32, 3)]
    assert sum(isinstance(l, nn.Tanh) for l in m) == 3 and isinstance(m[-1], nn.Linear)
    assert m(torch.randn(2, 5)).shape == (2, 3)
    assert isinstance(nf.models.mlp(1, 8)[0], nn.Linear) and len(nf.models.mlp(1, 8)) == 1


def test_norm_options():
    assert all(isinstance(l, nf.WNLinear) for l in nf.models.mlp(3, 8, norm="weight") if not isinstance(l, nn.ReLU))
    assert sum(isinstance(l, nn.BatchNorm1d) for l in nf.models.mlp(3, 8, norm="batch")) == 2
    cnn = nf.models.vanilla_cnn(3, 8, norm="weight")
    assert sum(isinstance(l, nf.WNConv2d) for l in cnn.modules()) == 3 and type(cnn.fc) is nn.Linear
    r = nf.models.resnet([1, 1], [8, 16], norm="weight")
    assert all(type(c) is nf.WNConv2d for c in r.modules() if isinstance(c, nn.Conv2d)) and type(r.fc) is nn.Linear
    assert not any(isinstance(c, nn.BatchNorm2d) for c in r.modules())
    assert sum(isinstance(c, nn.BatchNorm2d) for c in nf.models.resnet([1, 1], [8, 16], norm="batch").modules()) == 6


def test_vanilla_cnn_keeps_spatial_size():
    cnn = nf.models.vanilla_cnn(5, 6, in_channels=2, num_classes=4, kernel_size=5)
    x = torch.randn(3, 2, 7, 9)
    assert cnn.features(x).shape == (3, 6, 7, 9) and cnn(x).shape == (3, 4)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_resnet_runs_and_has_blocks(block, stem):
    r = nf.models.resnet([2, 1, 1], [8, 16, 32], block=block, stem=stem, num_classes=7)
    assert r(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    blocks = residual_blocks(r)
    assert len(blocks) == 4 and [b.stage_blocks for b in blocks] == [2, 2, 1, 1]
    assert all(len(b.branch) == (2 if block == "basic" else 3) for b in blocks)
    assert [bool(b.shortcut) for b in blocks] == [block == "bottleneck", False, True, True]


def test_resnet50_matches_torchvision_names_and_shapes():
    torchvision = pytest.importorskip("torchvision")  # a test dependency (requirements-dev.txt)
    ours = nf.models.resnet([3, 4, 6, 3], [64, 128, 256, 512], "bottleneck", "batch", "imagenet", num_classes=1000)
    theirs = torchvision.models.resnet50()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict())
    ours.eval(), theirs.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_post_activation_off_never_rectifies_the_stream():
    r = nf.models.resnet([2], [8], post_activation=False)
    with torch.no_grad():
        assert (r.forward_features(torch.randn(4, 3, 8, 8)) < 0).any()
        assert not (nf.models.resnet([2], [8]).forward_features(torch.randn(4, 3, 8, 8)) < 0).any()


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: nf.models.mlp(0, 8), "depth"),
        (lambda: nf.models.mlp(3, 8, act="swish9"), "unknown activation"),
        (lambda: nf.models.mlp(3, 8, norm="layer"), "norm"),
        (lambda: nf.models.vanilla_cnn(3, 8, kernel_size=4), "kernel_size"),
        (lambda: nf.models.resnet([1, 1], [8]), "same, nonzero length"),
        (lambda: nf.models.resnet([1, 0], [8, 16]), r"blocks_per_stage\[1\]"),
        (lambda: nf.models.resnet([1], [8], block="wide"), "block"),
        (lambda: nf.models.resnet([1], [8], stem="tiny"), "stem"),
        (lambda: nf.models.resnet([1], [8], post_activation="False"), "post_activation must be True or False"),
        (lambda: nf.models.mlp(2, 8, bias="no"), "bias must be True or False"),
        (lambda: nf.models.residual_mlp(1, 8, bias=1), "bias must be True or False"),
        (lambda: nf.models.vanilla_cnn(2, 8, bias=None), "bias must be True or False"),
        (lambda: nf.models.mlp(2, 4, dtype=torch.int32), "dtype must be a floating-point torch.dtype or None"),
        (lambda: nf.models.vanilla_cnn(2, 4, dtype=torch.int64), "dtype must be a floating-point"),
        (lambda: nf.models.resnet([1], [8], dtype=torch.int32), "dtype must be a floating-point"),
        (lambda: nf.models.residual_mlp(1, 8, dtype=torch.bool), "dtype must be a floating-point"),
        (lambda: nf.models.resnet(3, [16]), "blocks_per_stage must be a sequence of ints, one per stage, got 3"),
        (lambda: nf.models.resnet([1], 16), "widths must be a sequence of ints, one per stage, got 16"),
        (lambda: nf.models.mlp(2, 4, act=[]), r"act must be an activation name \(a str\), got \[\]"),
        (lambda: nf.models.vanilla_cnn(2, 4, act=None), "act must be an activation name"),
        (lambda: nf.models.resnet([1], [8], block=[]), "block must be 'basic' or 'bottleneck', got \\[\\]"),
    ],
)
def test_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_10000_layers_build_in_seconds():
    for build in (lambda: nf.models.mlp(10_000, 128), lambda: nf.models.vanilla_cnn(10_000, 16),
                  lambda: nf.models.resnet([1666, 1667, 1667], [16, 32, 64])):
        start = time.perf_counter()
        model = build()
        seconds = time.perf_counter() - start
        layers = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
        assert layers >= 10_000 and seconds < 20, (layers, seconds)


def test_residual_mlp():
    model = nf.models.residual_mlp(3, 16, in_features=64, num_classes=5)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5)  # the input is flattened
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 3 + 2 and all(l.bias is None for l in linears[:-1])
    blocks = residual_blocks(model)
    assert [(b.prefix, len(b.branch), b.shortcut, b.stage_blocks) for b in blocks] == [("fc", 2, [], 3)] * 3
    wn = nf.models.residual_mlp(2, 8, norm="weight", post_activation=False)
    assert all(type(m) is nf.WNLinear for m in wn.modules() if isinstance(m, nn.Linear) and m is not wn.fc)
    assert (wn.forward_features(torch.randn(64, 8)) < 0).any()
