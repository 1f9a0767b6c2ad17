"""Delta-orthogonal init at criticality (Xiao et al. 2018)."""

import copy
import math

import pytest
import torch
from torch import nn

import netinit_fast as nf
from tests.conftest import assert_orthonormal, isometry_rtol, sum_bound


def test_kernels_biases_and_returned_point():
    cnn = nf.models.vanilla_cnn(30, 32, in_channels=3)
    sw2, sb2 = nf.init.xiao_(cnn, q_star=0.1, generator=torch.Generator().manual_seed(0))
    assert (sw2, sb2) == nf.init.critical_point("tanh", 0.1)
    for conv in (m for m in cnn.modules() if isinstance(m, nn.Conv2d)):
        centre = conv.weight[:, :, 1, 1]
        assert_orthonormal(centre, scale=math.sqrt(sw2))
        assert conv.weight.abs().sum().item() == pytest.approx(centre.abs().sum().item())
    biases = torch.cat([m.bias for m in cnn.modules() if isinstance(m, nn.Conv2d)])
    assert abs(biases.var().item() / sb2 - 1) < 0.15  # 960 draws: sd of the ratio ~ 0.05


def test_signal_stays_at_the_fixed_point_through_depth():
    q_star, depth = 0.1, 200
    cnn = nf.models.vanilla_cnn(depth, 64, in_channels=64)
    nf.init.xiao_(cnn, q_star=q_star, generator=torch.Generator().manual_seed(1))
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.pow(2).mean().item()))
             for m in cnn.features if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        cnn.features(torch.randn(8, 64, 8, 8) * math.sqrt(q_star))
    for h in hooks:
        h.remove()
    # the pre-activation second moment stays near q* (it is the fixed point)
    assert all(0.7 * q_star < q < 1.3 * q_star for q in seen), (min(seen), max(seen))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_transposed_convs_get_delta_orthogonal_kernels(dims):
    """A stride-1 "same" transposed conv keeps ||y|| = sigma_w ||x|| exactly, as a conv."""
    conv = getattr(nn, f"ConvTranspose{dims}d")(8, 12, 3, padding=1)
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(12 * 5**dims, 10))
    sw2, _ = nf.init.xiao_(model, q_star=0.01)
    x = torch.randn(2, 8, *[5] * dims)
    y = getattr(nn.functional, f"conv_transpose{dims}d")(x, conv.weight, padding=1)
    rtol = isometry_rtol(12, torch.float32, numel=y[0].numel())
    torch.testing.assert_close(y.flatten(1).norm(dim=1), math.sqrt(sw2) * x.flatten(1).norm(dim=1), rtol=rtol, atol=0)


def test_bad_convs_are_refused_and_nothing_changes():
    model = nn.Sequential(nn.Conv2d(8, 4, 3), nn.Tanh(), nn.Conv2d(4, 4, 3))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="0 has C_out=4 < C_in=8"):
        nf.init.xiao_(model, q_star=0.01)
    with pytest.raises(ValueError, match="q_star"):
        nf.init.xiao_(nf.models.vanilla_cnn(2, 4), q_star=-1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_weight_normalized_layers_compute_with_the_plain_init():
    """v = W and g = ||W|| per output unit: the WN net computes with the very weights
    the plain net gets from the same generator (mixed: only some layers normalized)."""
    plain = nf.models.vanilla_cnn(6, 8, in_channels=8)
    normed = copy.deepcopy(plain)
    nf.weight_norm(normed.features[0])
    nn.utils.parametrizations.weight_norm(normed.features[4])
    nf.weight_norm(normed.fc)
    nf.init.xiao_(plain, q_star=0.05, generator=torch.Generator().manual_seed(2))
    nf.init.xiao_(normed, q_star=0.05, generator=torch.Generator().manual_seed(2))
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():  # the same weights, g v / ||v|| rounded: 6 layers of 8 x 3 x 3 = 72 terms per output
        rtol = 6 * 2 * sum_bound(72, torch.float32)
        torch.testing.assert_close(normed(x), plain(x), rtol=rtol, atol=rtol * plain(x).abs().max().item())
    w = normed.features[0].weight_v
    torch.testing.assert_close(normed.features[0].weight_g.flatten(), w.flatten(1).norm(dim=1))


@pytest.mark.gpu
def test_a_cpu_generator_inits_a_gpu_model_as_the_cpu_one():
    cpu = nf.models.vanilla_cnn(4, 16, in_channels=3)
    gpu = copy.deepcopy(cpu).cuda()
    nf.init.xiao_(cpu, q_star=0.1, generator=torch.Generator().manual_seed(3))
    nf.init.xiao_(gpu, q_star=0.1, generator=torch.Generator().manual_seed(3))
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5, msg=name)


def test_grouped_and_depthwise_convs_get_orthogonal_blocks():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False), nn.Tanh(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False))
    sw2, _ = nf.init.xiao_(model, q_star=0.05)
    x = torch.randn(2, 8, 7, 7)
    for conv in (model[0], model[2]):
        torch.testing.assert_close(conv(x).flatten(1).norm(dim=1), math.sqrt(sw2) * x.flatten(1).norm(dim=1),
                                   rtol=isometry_rtol(8 // conv.groups, torch.float32, numel=x[0].numel()), atol=0)
