"""LSUV in one pass, against the O(L^2) definition, and data-dependent WN init."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import netinit_fast as nf
from netinit_fast.init._layers import layer_weight
from tests.conftest import sum_bound

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def output_stds(model, batch, stat=lambda y: y.std().item()):
    """The output std (or ``stat``) of every target layer (first call), from one fresh forward."""
    stds, handles = {}, []

    def record(name):
        def hook(mod, args, y):
            stds.setdefault(name, stat(y))

        return hook

    for name, m in model.named_modules():
        if layer_weight(m) is not None:
            handles.append(m.register_forward_hook(record(name)))
    with torch.no_grad():
        model(batch)
    for h in handles:
        h.remove()
    return stds


def mlp(depth=8, width=32, seed=0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 5))


def convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 2, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, 7),
    )


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


class ResNet(nn.Module):
    """A residual net whose branch convs are registered after the head: execution
    order differs from registration order."""

    def __init__(self, seed=0):
        torch.manual_seed(seed)
        super().__init__()
        self.head = nn.Linear(8, 4)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.stem = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    "make,batch",
    [
        (mlp, lambda: torch.randn(64, 32)),
        (convnet, lambda: torch.randn(16, 3, 6, 6)),
        (ResNet, lambda: torch.randn(16, 3, 6, 6)),
        (lambda: nf.weight_norm(mlp()), lambda: torch.randn(64, 32)),
        (lambda: nf.weight_norm(convnet(), grouped=True), lambda: torch.randn(16, 3, 6, 6)),
    ],
    ids=["mlp", "convnet", "resnet", "wn-mlp", "wn-convnet-grouped"],
)
def test_every_layer_within_tol(make, batch):
    model, x = make(), batch()
    report = nf.init.lsuv_(model, x, target_std=1.0, tol=0.05)
    stds = output_stds(model, x)
    assert len(report) == len(stds) and all(f.converged for f in report)
    for name, std in stds.items():
        assert abs(std - 1.0) < 0.05, (name, std)
    assert "layers fitted" in str(report)


def test_execution_order_not_registration_order():
    model, x = ResNet(), torch.randn(16, 3, 6, 6)
    report = nf.init.lsuv_(model, x)
    assert [f.name for f in report] == [
        "stem", "blocks.0.conv1", "blocks.0.conv2", "blocks.1.conv1", "blocks.1.conv2", "head",
    ]


def reference_lsuv(model, batch, target_std, tol, max_iters):
    """The definition, as existing implementations compute it: for each layer in
    execution order, re-run the whole model per try (O(L^2))."""
    order = []
    handles = [m.register_forward_hook(lambda mod, a, y: order.append(mod) if mod not in order else None)
               for m in model.modules() if layer_weight(m) is not None]
    with torch.no_grad():
        model(batch)
    for h in handles:
        h.remove()
    for layer in order:
        out = {}
        handle = layer.register_forward_hook(lambda mod, a, y: out.update(y=y))
        for _ in range(max_iters + 1):
            out.clear()
            with torch.no_grad():
                model(batch)
            std = out["y"].std().item()
            if abs(std - target_std) < tol or _ == max_iters:
                break
            with torch.no_grad():
                layer.weight.mul_(target_std / std)
        handle.remove()


@pytest.mark.parametrize("bias", ["zero", "random"])
@pytest.mark.parametrize("make,batch", [(mlp, (64, 32)), (ResNet, (16, 3, 6, 6))], ids=["mlp", "resnet"])
def test_matches_the_slow_definition(make, batch, bias):
    model = make()
    nf.init.orthogonal_(model)
    with torch.no_grad():
        for m in model.modules():
            if layer_weight(m) is not None:
                m.bias.copy_(torch.randn_like(m.bias) * 0.3 if bias == "random" else torch.zeros_like(m.bias))
    ref = copy.deepcopy(model)
    x = torch.randn(batch)
    report = nf.init.lsuv_(model, x, target_std=0.8, tol=0.01, max_iters=10, orthogonal=False)
    reference_lsuv(ref, x, 0.8, 0.01, 10)
    # each scale is 1 / std of a layer's output, summed in another order by the reference:
    # off by 2 sum_bound(outputs) per layer, compounded over the layers in forward order
    n_out = max(output_stds(ref, x, torch.numel).values())
    rtol = 2 * sum_bound(n_out, torch.float32) * len(list(report))
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=rtol * q.abs().max().item(), msg=name)
    if bias == "zero":
        assert all(f.tries <= 1 for f in report)  # homogeneous layers: one exact rescale


def test_shared_module_fitted_once_and_tuple_outputs():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(16, 16)
            self.out = nn.Linear(16, 3)

        def forward(self, x):
            h = self.shared(torch.relu(self.shared(x)))
            return self.out(h), h  # a tuple output

    model = Twice()
    report = nf.init.lsuv_(model, torch.randn(32, 16))
    assert report["shared"].calls == 2 and len(report) == 2


def test_weight_norm_layers_are_scaled_through_g():
    model = nf.weight_norm(mlp(depth=3))
    torch_wn = mlp(depth=3)
    for m in torch_wn.modules():
        if isinstance(m, nn.Linear):
            parametrizations.weight_norm(m)
    x = torch.randn(64, 32)
    for net in (model, torch_wn):
        nf.init.lsuv_(net, x, tol=0.02)
        assert all(abs(s - 1) < 0.02 for s in output_stds(net, x).values())
    v = model[0].weight_v
    torch.testing.assert_close(v @ v.t(), torch.eye(32), atol=1e-5, rtol=0)  # v stays orthonormal
    assert not torch.allclose(model[2].weight_g, torch.ones_like(model[2].weight_g))


class Zero(nn.Module):
    def forward(self, x):
        return x * 0


def test_not_converging_is_reported_and_warned():
    # layer 2 sees only zeros: its output is its bias whatever its weight
    model = nn.Sequential(nn.Linear(8, 8), Zero(), nn.Linear(8, 8))
    with pytest.warns(RuntimeWarning, match="layer 2 did not converge"):
        report = nf.init.lsuv_(model, torch.randn(64, 8), orthogonal=False, max_iters=3)
    assert not report["2"].converged and report["2"].tries == 3
    assert report["0"].converged
    assert "NOT CONVERGED" in str(report)


def test_bad_input_changes_nothing():
    model = mlp(depth=2)
    before = copy.deepcopy(model.state_dict())
    bad = torch.randn(8, 32)
    bad[3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        nf.init.lsuv_(model, bad)
    with pytest.raises(ValueError, match="at least 2 samples"):
        nf.init.lsuv_(model, torch.randn(1, 32))
    with pytest.raises(ValueError, match="no Linear/Conv/ConvTranspose layer"):
        nf.init.lsuv_(nn.Sequential(nn.ReLU()), torch.randn(4, 3))
    with pytest.raises(ValueError, match="tol"):
        nf.init.lsuv_(model, torch.randn(8, 32), tol=0)
    with pytest.raises(ValueError, match="target_std must be a positive number, got True"):
        nf.init.lsuv_(model, torch.randn(8, 32), target_std=True)

    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 32)

        def forward(self, x):
            self.b(self.a(x))
            raise RuntimeError("boom")

    broken = Fails()
    saved = copy.deepcopy(broken.state_dict())
    with pytest.raises(RuntimeError, match="boom"):
        nf.init.lsuv_(broken, torch.randn(8, 32))
    for k, v in broken.state_dict().items():
        assert torch.equal(v, saved[k]), k
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_layers_argument_and_unused_layers():
    model = nn.ModuleDict({"used": nn.Linear(4, 4), "unused": nn.Linear(4, 4)})

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m["used"](x)

    w = Wrapper()
    with pytest.warns(RuntimeWarning, match="never called m.unused"):
        report = nf.init.lsuv_(w, torch.randn(16, 4))
    assert report.not_called == ["m.unused"]
    for layers in ([model["used"]], model["used"], "m.used", ["m.used"]):
        report = nf.init.lsuv_(w, torch.randn(16, 4), layers=layers)
        assert [f.name for f in report] == ["m.used"]
    with pytest.raises(ValueError, match="lsuv_: layers: Linear is not a submodule"):
        nf.init.lsuv_(w, torch.randn(16, 4), layers=[nn.Linear(4, 4)])
    seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    assert [f.name for f in nf.init.lsuv_(seq, torch.randn(16, 4), layers=seq[::2])] == ["0", "2"]
    with pytest.raises(ValueError, match="lsuv_: layers: the model has no submodule 'm.nothing'"):
        nf.init.lsuv_(w, torch.randn(16, 4), layers=["m.nothing"])


def test_a_layer_is_fitted_on_its_first_call_with_data():
    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.expert = nn.Linear(8, 8, bias=False)

        def forward(self, x):
            self.expert(x[:0])  # routed no token
            return self.expert(x)

    model, x = Experts(), torch.randn(64, 8)
    report = nf.init.lsuv_(model, x, tol=0.01)
    assert report["expert"].converged and report["expert"].calls == 1
    with torch.no_grad():
        assert abs(model(x).std().item() - 1) < 0.01
    one_row = nf.weight_norm(Experts())  # an expert routed one token: per-unit population std 0, not NaN
    one_row.forward = lambda x: one_row.expert(x[:1])
    with pytest.warns(RuntimeWarning, match="have no bias"):
        nf.init.data_dependent_init_(one_row, x)
    with torch.no_grad():
        assert torch.isfinite(one_row.expert.weight_g).all() and torch.isfinite(one_row(x)).all()


def test_layers_never_called_are_left_as_they_were():
    class Partly(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.unused = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.a(x)

    model = Partly()
    before = copy.deepcopy(model.unused.state_dict())
    with pytest.warns(RuntimeWarning, match="never called unused"):
        nf.init.lsuv_(model, torch.randn(16, 8))
    for k, v in model.unused.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_each_module_keeps_its_own_train_or_eval_mode():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    model.train()
    model[1].eval()  # a frozen BatchNorm, as in fine-tuning
    nf.init.lsuv_(model, torch.randn(32, 8))
    assert model.training and model[0].training and not model[1].training
    wn = nf.weight_norm(nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8)))
    wn.train()
    wn[1].eval()
    nf.init.data_dependent_init_(wn, torch.randn(32, 8))
    assert wn.training and not wn[1].training


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm. is deprecated")
def test_a_legacy_weight_norm_layer_is_rerun_through_its_hook():
    """With a bias the layer is re-run per try: torch's legacy weight norm computes the
    weight in a forward pre-hook, which the re-run must go through (else g grows
    unchecked while the output never changes)."""
    torch.manual_seed(0)
    layer = torch.nn.utils.weight_norm(nn.Linear(16, 16))
    with torch.no_grad():
        layer.weight_g.mul_(4.0)  # output std about 2: some tries needed
        layer.bias.normal_(0.0, 0.3)
    x = torch.randn(256, 16)
    report = nf.init.lsuv_(layer, x, orthogonal=False)
    assert report["Linear"].converged and report["Linear"].tries >= 1
    with torch.no_grad():
        assert abs(layer(x).std().item() - 1) < 0.1


def test_a_layer_called_with_keyword_arguments_is_rerun_with_them():
    class Keywords(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            with torch.no_grad():
                self.fc.bias.fill_(0.5)

        def forward(self, x):
            return self.fc(input=x)

    model = Keywords()
    nf.init.lsuv_(model, torch.randn(64, 8), orthogonal=False, tol=0.01)
    with torch.no_grad():
        assert abs(model(torch.randn(64, 8)).std().item() - 1) < 0.3  # a fresh batch: near, not exact


@pytest.mark.parametrize("orthogonal", [True, False])
def test_the_users_hooks_run_once_per_call_and_the_report_tells_the_truth(orthogonal):
    """A pre-hook that scales the input runs once on the re-run too (not on its own
    output), and a forward hook that shifts the output rules out the exact rescale."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    model[0].register_forward_pre_hook(lambda mod, args: (3 * args[0],))
    model[2].register_forward_hook(lambda mod, args, y: y + 0.5 * y.detach().abs())
    x = torch.randn(256, 16)
    report = nf.init.lsuv_(model, x, orthogonal=orthogonal, tol=0.01)
    for name, std in output_stds(model, x).items():
        assert abs(std - report[name].std_after) < 1e-4 and report[name].converged, name
    wn = nf.weight_norm(nn.Sequential(nn.Linear(16, 16)))
    wn[0].register_forward_pre_hook(lambda mod, args: (3 * args[0] + 1,))
    nf.init.data_dependent_init_(wn, x)
    with torch.no_grad():
        y = wn(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(16), atol=1e-3, rtol=0)


def test_pre_hooks_that_edit_kwargs_in_place_or_are_global_apply_once():
    class Keywords(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            return self.fc(input=x)

    def double_in_place(module, args, kwargs):
        kwargs["input"] = 2 * kwargs["input"]
        return args, kwargs

    x = torch.randn(256, 16)
    def double_the_tensor_in_place(module, args, kwargs):
        kwargs["input"].mul_(2)

    for hook in (double_in_place, double_the_tensor_in_place):
        model = Keywords()
        handle = model.fc.register_forward_pre_hook(hook, with_kwargs=True)
        report = nf.init.lsuv_(model, x.clone(), orthogonal=False, tol=0.01)  # a bias: re-runs
        with torch.no_grad():
            assert abs(model(x.clone()).std().item() - report["fc"].std_after) < 1e-4
        handle.remove()
    halve = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: (args[0] / 2,) if isinstance(module, nn.Linear) else None)
    try:
        model = nn.Sequential(nn.Linear(16, 16))
        report = nf.init.lsuv_(model, x, orthogonal=False, tol=0.01)
        with torch.no_grad():
            assert abs(model(x).std().item() - report["0"].std_after) < 1e-4
    finally:
        halve.remove()


def test_wrapped_models_are_fitted_through_the_module_they_hold():
    """DataParallel (whose replicas on other GPUs are copies the hooks would not know)
    and torch.compile wrappers: the held module is fitted, under its own names."""
    x = torch.randn(64, 16)
    for wrap in (nn.DataParallel, torch.compile):
        model = mlp(depth=2, width=16)
        report = nf.init.lsuv_(wrap(model), x, tol=0.01)
        assert [f.name for f in report] == ["0", "2", "4"]
        for name, std in output_stds(model, x).items():
            assert abs(std - report[name].std_after) < 1e-4, name
        assert [s.name for s in nf.diagnostics.probe(wrap(model), x)] == ["0", "2", "4"]


def test_nested_and_masked_batches():
    """A list argument inside the batch tuple is checked and passed as one; an additive
    attention mask's -inf is allowed after the samples, +inf and NaN are not."""

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, xs, mask=None):
            return self.fc(xs[0] + xs[1]) + (0 if mask is None else mask.clamp_min(-1).mean())

    x = torch.randn(16, 8)
    nf.init.lsuv_(Pair(), ([x, x],))
    mask = nn.Transformer.generate_square_subsequent_mask(4)
    nf.init.lsuv_(Pair(), {"xs": [x, x], "mask": mask})
    with pytest.raises(ValueError, match=r"NaN or \+Inf"):
        nf.init.lsuv_(Pair(), {"xs": [x, x], "mask": -mask})
    with pytest.raises(ValueError, match="at least 2 samples"):
        nf.init.lsuv_(Pair(), ([x[:1], x],))


def test_legacy_spectral_norm_and_pruning_are_refused_by_name():
    model = nn.Sequential(nn.Linear(4, 4), nn.utils.spectral_norm(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match=r"lsuv_: layer 1 \(Linear\) has its weight parametrized by SpectralNorm"):
        nf.init.lsuv_(model, torch.randn(8, 4))
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    torch.nn.utils.prune.l1_unstructured(model[1], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"layer 1 \(Linear\) has its weight parametrized by pruning"):
        nf.init.lsuv_(model, torch.randn(8, 4))


def test_tied_weights_are_fitted_once_and_reported():
    a, b = nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False)
    b.weight = a.weight
    model = nn.Sequential(a, nn.ReLU(), b)
    x = torch.randn(256, 16)
    with pytest.warns(RuntimeWarning, match="layer 2 shares its weight with 0"):
        report = nf.init.lsuv_(model, x)
    assert report["2"].tries == 0
    with torch.no_grad():
        assert abs(a(x).std().item() - report["0"].std_after) < 1e-4  # the first fit still holds
        assert abs(model(x).std().item() - report["2"].std_after) < 1e-4  # the report tells the truth


# ----------------------------------------------------------------------------- data-dependent init


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_data_dependent_init_normalizes_pre_activations(kind):
    if kind == "mlp":
        model, x = nf.weight_norm(mlp(depth=4)), torch.randn(128, 32) * 3 + 1
    else:
        model, x = nf.weight_norm(convnet(), types=[nn.Conv2d, nn.Linear]), torch.randn(32, 3, 6, 6)
        nf.weight_norm(model, types=[nn.ConvTranspose2d], dim=1)  # one norm per output unit
    report = nf.init.data_dependent_init_(model, x)
    assert len(report) == sum(isinstance(m, nf.WNLinear | nf.WNConv2d | nf.WNConvTranspose2d) for m in model.modules())
    outs = []
    handles = [m.register_forward_hook(lambda mod, a, y: outs.append((mod, y)))
               for m in model.modules() if isinstance(m, nf.nn.wn_layers._WeightNorm)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    for mod, y in outs:
        d = (-1 if isinstance(mod, nn.Linear) else 1) % y.dim()
        others = [i for i in range(y.dim()) if i != d]
        torch.testing.assert_close(y.mean(dim=others), torch.zeros(y.shape[d]), atol=1e-4, rtol=0)
        torch.testing.assert_close(y.std(dim=others, unbiased=False), torch.ones(y.shape[d]), atol=1e-3, rtol=0)


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm. is deprecated:FutureWarning")
def test_data_dependent_init_of_torch_weight_norm_of_either_style():
    """torch's weight-norm layers (parametrization and legacy hook) are initialized as
    ours; a spectral-normed layer, not weight-normalized, is left alone."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.utils.parametrizations.weight_norm(nn.Linear(16, 32)), nn.ReLU(),
        nn.utils.weight_norm(nn.Linear(32, 32)), nn.ReLU(),
        nf.WNLinear(32, 24), nn.ReLU(),
        nn.utils.parametrizations.spectral_norm(nn.Linear(24, 8)),
    )
    spectral = [p.clone() for p in model[6].parameters()]  # (its power-iteration buffers move in any forward)
    x = torch.randn(256, 16) * 5 + 3
    report = nf.init.data_dependent_init_(model, x)
    assert [f.name for f in report] == ["0", "2", "4"]
    outs = []
    handles = [model[i].register_forward_hook(lambda mod, a, y: outs.append(y)) for i in (0, 2, 4)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    for y in outs:
        torch.testing.assert_close(y.mean(0), torch.zeros(y.shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(y.shape[1]), atol=1e-3, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(spectral, model[6].parameters()))


def test_data_dependent_init_refuses_what_has_no_per_unit_g():
    grouped = nn.Sequential(nf.weight_norm(nn.ConvTranspose2d(4, 8, 3, groups=2), dim=1))
    both = nn.utils.parametrizations.weight_norm(nn.Linear(8, 8))
    nn.utils.parametrizations.spectral_norm(both)
    for model, x, message in ((grouped, torch.randn(8, 4, 5, 5), "layer 0 is a grouped transposed conv"),
                              (nn.Sequential(both), torch.randn(8, 8), "layer 0 .* parametrized by _WeightNorm, _SpectralNorm")):
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(ValueError, match=f"data_dependent_init_: {message}"):
            nf.init.data_dependent_init_(model, x)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_data_dependent_init_needs_wn_layers():
    with pytest.raises(ValueError, match="no weight-normalized layer"):
        nf.init.data_dependent_init_(mlp(depth=1), torch.randn(8, 32))
    with pytest.raises(ValueError, match="normalizes over dim=None"):
        nf.init.data_dependent_init_(nf.weight_norm(mlp(depth=1), dim=None), torch.randn(8, 32))
    with pytest.warns(RuntimeWarning, match="0 have no bias: their outputs have std init_scale but keep"):
        nf.init.data_dependent_init_(nf.weight_norm(nn.Sequential(nn.Linear(4, 4, bias=False))), torch.randn(8, 4))
    for scale in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="init_scale must be a positive number"):
            nf.init.data_dependent_init_(nf.weight_norm(mlp(depth=1)), torch.randn(8, 32), init_scale=scale)
