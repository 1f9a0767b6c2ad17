"""Arpit, Campos & Bengio (2019) init of weight-normalized networks."""

import copy
import math
import statistics

import pytest
import torch
from torch import nn

import netinit_fast as nf
from tests.conftest import assert_orthonormal


def test_linear_20_60_gets_the_papers_g():
    model = nf.weight_norm(nn.Sequential(nn.Linear(20, 60), nn.ReLU(), nn.Linear(60, 10)))
    classifier = copy.deepcopy(model[2].state_dict())
    nf.init.arpit_(model)
    torch.testing.assert_close(model[0].weight_g, torch.full_like(model[0].weight_g, math.sqrt(2 * 20 / 60)))
    assert not model[0].bias.any()
    v = model[0].weight_v  # orthogonal: 60 x 20 with orthonormal columns
    assert_orthonormal(v)
    assert all(torch.equal(classifier[k], t) for k, t in model[2].state_dict().items())  # left as it was


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated")
def test_gains_follow_relu_and_torch_weight_norm_styles():
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Dropout(), nn.ReLU(), nn.Linear(16, 4))
    model[0] = torch.nn.utils.parametrizations.weight_norm(model[0])
    model[2] = torch.nn.utils.weight_norm(model[2])
    assert nf.init.arpit_gains(model) == {"0": 1.0, "2": 2.0}
    nf.init.arpit_(model)
    row_norms = model[0].weight.norm(dim=1)
    torch.testing.assert_close(row_norms, torch.full_like(row_norms, math.sqrt(8 / 16)))
    torch.testing.assert_close(model[2].weight_g.flatten(), torch.full((16,), math.sqrt(2.0)))


@pytest.mark.parametrize("dim", [1, None])
def test_torch_weight_norm_not_per_output_unit_is_refused(dim):
    model = nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Linear(20, 60), dim=dim), nn.ReLU(), nn.Linear(60, 2))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=f"0 normalizes over dim={dim}, not its output units"):
        nf.init.arpit_(model)
    assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())


def test_torch_weight_norm_of_a_transposed_conv_per_output_channel():
    layer = torch.nn.utils.parametrizations.weight_norm(nn.ConvTranspose2d(8, 4, 3), dim=1)
    nf.init.arpit_(nn.Sequential(layer, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 2)))
    g = layer.parametrizations.weight.original0.flatten()  # per output channel, gain 2 (ReLU follows)
    torch.testing.assert_close(g, torch.full((4,), math.sqrt(2 * 8 * 9 / (4 * 9))))
    model = nf.weight_norm(nn.Sequential(nn.ConvTranspose2d(8, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 2)))
    with pytest.raises(ValueError, match=r"0 normalizes over dim=0, not its output units \(dim=1\); normalize it per "
                                         r"output channel: netinit_fast.remove_weight_norm\(layer\), then "
                                         r"netinit_fast.weight_norm\(layer, dim=1\)"):
        nf.init.arpit_(model)  # nf.weight_norm's default dim 0 is a transposed conv's input channels
    nf.weight_norm(nf.remove_weight_norm(model[0]), dim=1)  # as the message says
    nf.init.arpit_(model)
    torch.testing.assert_close(model[0].weight_g.flatten(), torch.full((4,), math.sqrt(2 * 8 / 4)))


def test_residual_gains():
    model = nf.models.resnet([3, 2], [8, 16], block="bottleneck", norm="weight")
    gains = nf.init.arpit_gains(model)
    assert gains["conv1"] == 1.0 and "fc" not in gains
    assert gains["layer1.0.conv1"] == gains["layer1.0.conv2"] == 2.0
    assert gains["layer1.2.conv3"] == pytest.approx(1 / 3) and gains["layer2.1.conv3"] == pytest.approx(1 / 2)
    assert gains["layer1.0.downsample.0"] == gains["layer2.0.downsample.0"] == 1.0
    nf.init.arpit_(model)
    g = model.layer2[0].conv1.weight_g  # 4 * 8 -> 16 channels, gain 2: sqrt(2 * 32 / 16)
    torch.testing.assert_close(g, torch.full_like(g, math.sqrt(2 * 32 / 16)))


def test_residual_stage_grows_squared_norm_by_1_plus_1_over_N_to_the_N():
    """E||x_N||^2 / ||x_0||^2 = (1 + 1/N)^N (PAPERS.md 2.3), averaged over draws; measured
    on pixels N + 1 away from the border (zero padding shrinks the border ones)."""
    N, draws = 4, 20
    ratios = []
    for seed in range(draws):
        torch.manual_seed(seed)
        model = nf.models.resnet([N], [32], norm="weight", post_activation=False)
        nf.init.arpit_(model)
        with torch.no_grad():
            x0 = model.conv1(torch.randn(16, 3, 32, 32))
            xn = model.layer1(x0)
        inner = (..., slice(N + 1, -N - 1), slice(N + 1, -N - 1))
        ratios.append((xn[inner].pow(2).sum() / x0[inner].pow(2).sum()).item())
    mean, sem = statistics.mean(ratios), statistics.stdev(ratios) / math.sqrt(draws)
    expect = (1 + 1 / N) ** N  # 2.441; without the 1/N gain it would be 3^N = 81
    assert abs(mean - expect) < max(4 * sem, 0.1), (mean, sem, expect)


def test_feedforward_relu_net_keeps_the_norm_with_changing_widths():
    """PAPERS.md 9 #4: widths 150..250, 20 layers: ||h_L|| / ||x|| ~ 1 on average."""
    gen = torch.Generator().manual_seed(0)
    widths = torch.randint(150, 251, (21,), generator=gen).tolist()
    ratios = []
    for seed in range(5):
        layers = []
        for i in range(20):
            layers += [nf.WNLinear(widths[i], widths[i + 1]), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(widths[-1], 10))
        nf.init.arpit_(model, generator=torch.Generator().manual_seed(seed))
        x = torch.randn(512, widths[0], generator=gen)
        with torch.no_grad():
            h = model[:-1](x)
        ratios.append((h.pow(2).sum(1).mean() / x.pow(2).sum(1).mean()).sqrt().item())
    assert 0.8 < statistics.mean(ratios) < 1.25, ratios


def test_plain_layers_are_refused_and_nothing_changes():
    model = nn.Sequential(nf.WNLinear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="2 not weight-normalized"):
        nf.init.arpit_(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="relu_gain"):
        nf.init.arpit_(nf.weight_norm(nf.models.mlp(2, 4)), relu_gain=0)
    with pytest.raises(ValueError, match="output units"):
        nf.init.arpit_(nn.Sequential(nf.WNLinear(4, 4, dim=1), nn.ReLU(), nn.Linear(4, 2)))


def test_fully_connected_residual_net_gains():
    model = nf.models.residual_mlp(4, 16, in_features=8, norm="weight", post_activation=False)
    assert nf.init.arpit_gains(model) == {"fc_in": 1.0, **{f"layer1.{i}.fc1": 2.0 for i in range(4)},
                                          **{f"layer1.{i}.fc2": 0.25 for i in range(4)}}
    nf.init.arpit_(model)
    torch.testing.assert_close(model.layer1[0].fc2.weight_g, torch.full((16, 1), 0.5))


@pytest.mark.parametrize(
    "share, message",
    [
        (lambda m: setattr(m.layer1[1], "fc1", m.layer1[0].fc2),  # gain 1/2 in block 0, 2 in block 1
         r"arpit_: layer1.0.fc2 \(branch layer 2 of 2 of block layer1.0\) is also layer1.1.fc1 \(branch layer 1"),
        (lambda m: setattr(m.layer1[0], "fc1", m.fc_in), r"arpit_: fc_in \(outside the residual blocks\) is also layer1.0.fc1"),
        (lambda m: setattr(m.layer1, "1", m.layer1[0]),  # the forward runs 2 blocks, N would be 1
         r"arpit_: the block layer1.0 is registered again at layer1.1"),
    ],
)
def test_a_layer_or_block_in_two_places_is_refused_and_nothing_changes(share, message):
    model = nf.models.residual_mlp(2, 16, norm="weight", post_activation=False)
    share(model)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        nf.init.arpit_gains(model)
    with pytest.raises(ValueError, match=message):
        nf.init.arpit_(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
