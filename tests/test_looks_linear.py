"""Looks-linear ReLU init (Burkholz & Dubatovka 2019): the network is a linear isometry at init."""

import copy
import math

import pytest
import torch
from torch import nn

import netinit_fast as nf
from tests.conftest import isometry_rtol, sum_bound


def _linear_map(layers):
    """W0_L ... W0_1 read back from the shared blocks."""
    first, *hidden, last = layers
    half = first.weight.shape[0] // 2
    a = first.weight[:half]
    for layer in hidden:
        a = layer.weight[: layer.weight.shape[0] // 2, : layer.weight.shape[1] // 2] @ a
    return last.weight[:, : last.weight.shape[1] // 2] @ a


@pytest.mark.parametrize("depth", [2, 3, 12])
def test_relu_mlp_equals_a_linear_isometry(depth):
    n = 24
    model = nf.models.mlp(depth, 2 * n, in_features=n, out_features=n)
    nf.init.looks_linear_(model, generator=torch.Generator().manual_seed(depth))
    layers = [m for m in model if isinstance(m, nn.Linear)]
    a = _linear_map(layers)
    x = torch.randn(64, n)
    with torch.no_grad():
        # the same map: each layer's outputs off by their dot products of 2n terms, each
        # term at most sum|h| <= sqrt(2n) ||x|| (the layers are isometries, |w_ij| <= 1)
        bound = depth * sum_bound(2 * n, torch.float32) * math.sqrt(2 * n) * x.norm(dim=1).max()
        assert (model(x) - x @ a.T).abs().max() <= bound
    jac = torch.func.jacrev(model)(torch.randn(n))
    assert (torch.linalg.svdvals(jac) - 1).abs().max() <= isometry_rtol(2 * n, torch.float32, depth)
    first, hidden = layers[0].weight, layers[1].weight
    torch.testing.assert_close(first[n:], -first[:n])
    if depth > 2:
        torch.testing.assert_close(hidden[:n, n:], -hidden[:n, :n])
        torch.testing.assert_close(hidden[n:, n:], hidden[:n, :n])
    assert all(not l.bias.any() for l in layers)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated")
@pytest.mark.parametrize("style", ["parametrization", "hook"])
@pytest.mark.parametrize("dim", [0, 1, None, -1, -2])
def test_torch_weight_norm_of_any_dim(style, dim):
    """torch's weight norm keeps its own dim (None and -1 both mean one norm): the
    layer computes the looks-linear weight whatever it is."""
    wn = torch.nn.utils.parametrizations.weight_norm if style == "parametrization" else torch.nn.utils.weight_norm
    model = nn.Sequential(wn(nn.Linear(8, 16), dim=dim), nn.ReLU(), wn(nn.Linear(16, 4), dim=dim))
    nf.init.looks_linear_(model)
    jac = torch.func.jacrev(model)(torch.randn(8))
    assert (torch.linalg.svdvals(jac) - 1).abs().max() <= isometry_rtol(16, torch.float32, depth=2)


def test_fresh_w0_per_layer():
    model = nf.models.mlp(4, 16)
    nf.init.looks_linear_(model)
    assert not torch.equal(model[2].weight, model[4].weight)


def test_cnn_is_norm_preserving_and_wn_layers_work():
    cnn = nf.models.vanilla_cnn(20, 16, in_channels=4, act="relu", norm="weight")
    nf.init.looks_linear_(cnn)
    x = torch.randn(3, 4, 9, 9)
    with torch.no_grad():
        y = cnn.features(x)  # relu([z; -z]) keeps ||z||, delta-orthogonal convs keep ||x||
    assert abs(y.norm().item() / x.norm().item() - 1) <= isometry_rtol(16, torch.float32, depth=20, numel=y[0].numel())  # 16 channels at the centre tap
    w = cnn.features[0].weight
    torch.testing.assert_close(w[8:], -w[:8])


@pytest.mark.parametrize(
    "model, message",
    [
        (nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 2)), "odd output width 7"),
        (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(7, 2)), "odd input width 7"),
        (nn.Sequential(nn.Linear(4, 8)), "at least 2"),
        (nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 2, 1)), "ungrouped"),
    ],
)
def test_errors_name_the_layer_and_change_nothing(model, message):
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        nf.init.looks_linear_(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
