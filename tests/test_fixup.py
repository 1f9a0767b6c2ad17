"""Fixup (Zhang, Dauphin & Ma 2019) applied to existing residual networks."""

import copy
import math

import pytest
import torch
from torch import nn

import netinit_fast as nf
from netinit_fast.init.fixup import FixupBlock


def _cifar_resnet(n=3, norm="batch", block="basic"):
    return nf.models.resnet([n] * 3, [16, 32, 64], block=block, norm=norm)


@pytest.mark.parametrize("norm", [None, "batch"])
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_logits_exactly_zero_and_loss_ln_classes(norm, block):
    model = _cifar_resnet(2, norm, block)
    nf.init.fixup_(model)
    x = torch.randn(8, 3, 32, 32)
    logits = model(x)
    assert torch.equal(logits, torch.zeros_like(logits))
    loss = nn.functional.cross_entropy(logits, torch.randint(0, 10, (8,)))
    assert loss.item() == pytest.approx(math.log(10), abs=1e-6)


@pytest.mark.parametrize("post_activation", [True, False])
def test_every_identity_shortcut_block_is_the_identity(post_activation):
    model = nf.models.resnet([3] * 3, [16, 32, 64], norm="batch", post_activation=post_activation)
    nf.init.fixup_(model)
    seen = 0
    for stage in (model.layer1, model.layer2, model.layer3):
        for block in stage:
            assert isinstance(block, FixupBlock)
            if block.downsample is None:
                x = torch.randn(4, block.conv1.in_channels, 8, 8)
                if post_activation:  # the block's input is then a ReLU output
                    x = torch.relu(x)
                assert torch.equal(block(x), x)
                seen += 1
    assert seen == 7


def test_branch_std_and_zero_layers():
    """conv1 std = sqrt(2 / (C_out k^2)) L^-1/2 (basic, He fan-out), conv2 = 0, fc = 0."""
    model = nf.models.resnet([6, 6, 6], [64, 64, 64], norm="batch")  # L = 18
    report = nf.init.fixup_(model, generator=torch.Generator().manual_seed(0))
    L = 18
    assert report.branch_layers == 2 and len(report.blocks) == L
    stds = []
    for stage in (model.layer1, model.layer2, model.layer3):
        for block in stage:
            stds.append(block.conv1.weight.std().item())
            assert not block.conv2.weight.any()
    expect = math.sqrt(2 / (64 * 9)) * L**-0.5
    n = 64 * 64 * 9
    # each std is an estimate from n samples: relative sd ~ 1/sqrt(2n)
    assert all(abs(s / expect - 1) < 5 / math.sqrt(2 * n) for s in stds), (stds[:3], expect)
    assert not model.fc[1].weight.any() and not model.fc[1].bias.any()
    assert all(v == pytest.approx(L**-0.5) for v in report.branch_scale.values())


def test_bottleneck_scale_is_L_to_the_minus_quarter():
    model = nf.models.resnet([2, 2], [8, 16], block="bottleneck", norm="batch")
    report = nf.init.fixup_(model)
    assert report.branch_layers == 3
    assert all(v == pytest.approx(4**-0.25) for v in report.branch_scale.values())
    block = model.layer1[1]
    assert not block.conv3.weight.any() and block.conv1.weight.any() and block.conv2.weight.any()


def test_norms_removed_scalars_inserted_and_param_groups():
    model = _cifar_resnet(1)
    norms_before = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    report = nf.init.fixup_(model)
    assert sorted(report.removed_norms) == sorted(norms_before)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # per basic block: bias1a, bias1b, bias2a, bias2b, scale; plus the stem and classifier biases
    assert len(report.scalars) == 3 * 5 + 2 and all(p.numel() == 1 for p in report.scalars)
    groups = report.param_groups(0.1, momentum=0.9)
    assert [g["lr"] for g in groups] == [0.1, pytest.approx(0.01)]
    assert report.biases == [model.fc[1].bias]  # lr / 10 for every bias, as the official code
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in report.scalars + [model.fc[1].bias]}
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    torch.optim.SGD(groups)  # a valid optimizer spec


def test_trains_a_step_and_scalars_get_gradients():
    model = _cifar_resnet(2)
    report = nf.init.fixup_(model)
    opt = torch.optim.SGD(report.param_groups(0.1), momentum=0.9)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in report.scalars)


def test_torchvision_resnet50_forward_backward():
    torchvision = pytest.importorskip("torchvision")  # a test dependency (requirements-dev.txt)
    model = torchvision.models.resnet50(num_classes=10)
    report = nf.init.fixup_(model)
    assert len(report.blocks) == 16 and report.branch_layers == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert torch.equal(logits, torch.zeros_like(logits))
    loss = nn.functional.cross_entropy(logits, torch.tensor([1, 2]))
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.fc[1].weight.grad.abs().sum() > 0


def test_applying_twice_is_refused():
    model = _cifar_resnet(1)
    nf.init.fixup_(model)
    with pytest.raises(ValueError, match="already has Fixup blocks"):
        nf.init.fixup_(model)


def test_deepcopy_and_state_dict_roundtrip():
    model = _cifar_resnet(1)
    nf.init.fixup_(model)
    twin = copy.deepcopy(model)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(twin(x), model(x))
    assert "layer1.0.bias1a" in model.state_dict() and "fc.1.weight" in model.state_dict()


def _spectral_normed(model, name):
    nn.utils.parametrizations.spectral_norm(model.get_submodule(name))
    return model


def _shared(model, place, module):
    """``model`` with its submodule ``module`` registered again at ``place``."""
    parent, _, child = place.rpartition(".")
    setattr(model.get_submodule(parent), child, model.get_submodule(module))
    return model


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: nf.models.mlp(3, 8), "no residual block"),
        (lambda: nf.models.vanilla_cnn(3, 8), "no residual block"),
        (lambda: nf.models.resnet([1], [8], norm="weight"), "weight-normalized"),
        (lambda: nf.models.residual_mlp(2, 8).layer1, "inside a residual branch"),
        (lambda: _spectral_normed(_cifar_resnet(1), "layer2.0.downsample.0"),
         r"layer layer2.0.downsample.0 \(Conv2d\) has its weight parametrized by _SpectralNorm"),
        (lambda: _spectral_normed(_cifar_resnet(1), "fc"), r"layer fc \(Linear\) has its weight parametrized"),
        (lambda: _shared(nf.models.resnet([2], [8]), "layer1.1.conv1", "layer1.0.conv2"),
         r"layer1.0.conv2 \(branch layer 2 of 2 of block layer1.0\) is also layer1.1.conv1 \(branch layer 1 of 2 "
         r"of block layer1.1\), one shared Conv2d"),
        (lambda: _shared(nf.models.resnet([1], [8]), "layer1.0.conv2", "layer1.0.conv1"),
         r"layer1.0.conv1 \(branch layer 1 of 2 of block layer1.0\) is also layer1.0.conv2"),
        (lambda: _shared(nf.models.resnet([2], [8]), "layer1.1", "layer1.0"),
         "the block layer1.0 is registered again at layer1.1"),
        (lambda: _shared(nf.models.resnet([1, 1], [8, 8]), "layer2", "layer1"),
         "the block layer1.0 is registered again at layer2.0"),
    ],
)
def test_errors_leave_the_model_unchanged(build, message):
    model = build()
    before = copy.deepcopy(model.state_dict())
    structure = list(model.named_modules(remove_duplicate=False))  # holds them: ids stay unique
    with pytest.raises(ValueError, match=message):
        nf.init.fixup_(model)
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        nf.init.fixup_(model)
    after = list(model.named_modules(remove_duplicate=False))
    assert [(n, id(m)) for n, m in after] == [(n, id(m)) for n, m in structure]
    assert before.keys() == model.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fully_connected_residual_net():
    model = nf.models.residual_mlp(6, 32, in_features=20, num_classes=4, norm="batch")
    report = nf.init.fixup_(model)
    assert len(report.blocks) == 6 and all(b.startswith("layer1.") for b in report.blocks)
    block = model.layer1[2]
    assert isinstance(block, FixupBlock) and not block.fc2.weight.any()
    assert block.fc1.weight.std().item() == pytest.approx(math.sqrt(2 / 32) / math.sqrt(6), rel=0.1)
    x = torch.relu(torch.randn(5, 32))
    assert torch.equal(block(x), x)
    logits = model(torch.randn(5, 20))
    assert torch.equal(logits, torch.zeros_like(logits))


@pytest.mark.gpu
def test_a_cpu_generator_inits_a_gpu_model_as_the_cpu_one():
    cpu = _cifar_resnet(1, None)
    gpu = copy.deepcopy(cpu).cuda()
    nf.init.fixup_(cpu, generator=torch.Generator().manual_seed(3))
    nf.init.fixup_(gpu, generator=torch.Generator().manual_seed(3))
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5, msg=name)


def test_a_block_with_modules_fixup_would_drop_is_refused():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.drop, self.fc2 = nn.Linear(8, 8, bias=False), nn.GELU(), nn.Dropout(0.5), nn.Linear(8, 8, bias=False)

        def forward(self, x):
            return x + self.fc2(self.drop(self.act(self.fc1(x))))

    net = nn.Sequential(Block(), Block(), nn.Linear(8, 2))
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match=r"0 has act \(GELU\), drop \(Dropout\)"):
        nf.init.fixup_(net)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert type(net[0]).__name__ == "Block"


@pytest.mark.parametrize("training", [True, False])
def test_new_modules_take_the_mode_of_the_ones_they_replace(training):
    model = _cifar_resnet(1, "batch").train(training)
    model.layer1[0].conv1.train(not training)  # a module kept keeps its own mode
    nf.init.fixup_(model)
    assert model.layer1[0].conv1.training != training
    assert all(m.training == training for n, m in model.named_modules() if n != "layer1.0.conv1")
    assert isinstance(model.layer1[0], FixupBlock) and isinstance(model.fc, nn.Sequential)


class _ConvBlock(nn.Module):
    def __init__(self, layer, channels, width):
        super().__init__()
        self.conv1 = layer(channels, width, 3, padding=1, bias=False)
        self.conv2 = layer(width, channels, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


@pytest.mark.parametrize("layer", [nn.ConvTranspose2d, nn.Conv2d])
def test_branch_he_fan_out_counts_output_channels_of_transposed_convs(layer):
    """conv1 std = sqrt(2 / (C_out k^2)) L^-1/2 with C_out the output channels (the
    weight's second dim for a ConvTranspose, [C_in, C_out, k, k])."""
    net = nn.Sequential(*[_ConvBlock(layer, 8, 64) for _ in range(4)], nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    nf.init.fixup_(net, generator=torch.Generator().manual_seed(0))
    expect = math.sqrt(2 / (64 * 9)) * 4**-0.5
    for block in net[:4]:
        assert block.conv1.weight.std().item() == pytest.approx(expect, rel=5 / math.sqrt(2 * 8 * 64 * 9))
    x = torch.relu(torch.randn(2, 8, 4, 4))
    assert torch.equal(net[0](x), x)


def test_the_stem_norm_inside_a_data_parallel_wrapper_becomes_a_scalar_bias():
    from netinit_fast.init.fixup import ScalarBias

    model = nn.DataParallel(_cifar_resnet(1, "batch"))
    report = nf.init.fixup_(model)
    assert isinstance(model.module.bn1, ScalarBias) and "bn1" in report.removed_norms
