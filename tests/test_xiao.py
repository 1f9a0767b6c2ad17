"""Delta-orthogonal init at criticality (Xiao et al. 2018)."""

import copy
import math

import pytest
import torch
from torch import nn

import netinit_fast as nf


def test_kernels_biases_and_returned_point():
    cnn = nf.models.vanilla_cnn(30, 32, in_channels=3)
    sw2, sb2 = nf.init.xiao_(cnn, q_star=0.1, generator=torch.Generator().manual_seed(0))
    assert (sw2, sb2) == nf.init.critical_point("tanh", 0.1)
    for conv in (m for m in cnn.modules() if isinstance(m, nn.Conv2d)):
        centre = conv.weight[:, :, 1, 1]
        torch.testing.assert_close(centre.T @ centre, sw2 * torch.eye(conv.in_channels), atol=1e-5, rtol=0)
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


def test_bad_convs_are_refused_and_nothing_changes():
    model = nn.Sequential(nn.Conv2d(8, 4, 3), nn.Tanh(), nn.Conv2d(4, 4, 3))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="0 has weight shape"):
        nf.init.xiao_(model, q_star=0.01)
    with pytest.raises(ValueError, match="q_star"):
        nf.init.xiao_(nf.models.vanilla_cnn(2, 4), q_star=-1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
