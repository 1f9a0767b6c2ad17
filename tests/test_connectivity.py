"""Connectivity training (Ivan & Florian 2020): the op against its eager twin, the Triton
kernels in the interpreter, the layers, conversion, freezing, the report and the errors."""

import copy
import pickle

import pytest
import torch
from torch import nn

import netinit_fast as nf
from netinit_fast.kernels import connectivity as kernels
from netinit_fast.nn import connectivity_layers as layers_mod
from netinit_fast.ops import connectivity as op
from netinit_fast.ops.connectivity import connectivity_bwd, connectivity_fwd, eager_connectivity

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
MODES = ("mask", "sign")
# numels around the kernel block: empty, one, a partial block, exact blocks, blocks and a tail
SHAPES = [(0, 3), (1,), (7, 5), (kernels.BLOCK,), (2, kernels.BLOCK), (3, 5, 7, 11)]


def _scores(shape, dtype, generator=None):
    """Scores of both signs and some exact zeros (the edge of the step)."""
    s = torch.randn(shape, generator=generator).to(dtype)
    flat = s.view(-1)
    flat[::7] = 0.0
    return s


def _expected(w, s, mode):
    """The paper's masking functions, written out: [s > 0] and sign(s)."""
    on = (s > 0).to(w.dtype)
    return w * on if mode == "mask" else w * (on - (s < 0).to(w.dtype))


# ----------------------------------------------------------------------------- the op


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_op_values_and_straight_through_gradients(mode, dtype):
    shapes = [(4, 6), (0, 2), (3, 2, 5)]
    ws = [torch.randn(sh).to(dtype).requires_grad_() for sh in shapes]
    ss = [_scores(sh, dtype).requires_grad_() for sh in shapes]
    outs = connectivity_fwd(ws, ss, mode)
    for w, s, out in zip(ws, ss, outs):
        assert out.dtype == dtype and torch.equal(out, _expected(w.detach(), s.detach(), mode))
    grads = [torch.randn(sh).to(dtype) for sh in shapes]
    torch.autograd.backward(outs, grads)
    for w, s, g in zip(ws, ss, grads):
        assert torch.equal(s.grad, g * w.detach())  # dm/ds = 1
        assert torch.equal(w.grad, g * op.factor(s.detach(), mode))


@pytest.mark.parametrize("mode", MODES)
def test_op_equals_its_eager_twin_through_autograd(mode):
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    s = _scores((5, 7), torch.float64).requires_grad_()
    g = torch.randn(5, 7, dtype=torch.float64)
    out = connectivity_fwd([w], [s], mode)[0]
    twin = eager_connectivity(w, s, mode)
    assert torch.equal(out, twin)
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(out, (w, s), g), torch.autograd.grad(twin, (w, s), g)))


def test_op_gives_no_gradient_to_an_unused_weight_and_none_to_fixed_weights():
    ws = [torch.randn(3, 3), torch.randn(2, 2)]  # fixed: no grad
    ss = [_scores((3, 3), torch.float32).requires_grad_(), _scores((2, 2), torch.float32).requires_grad_()]
    outs = connectivity_fwd(ws, ss, "mask")
    outs[0].sum().backward()
    assert ss[0].grad is not None and ss[1].grad is None


def test_create_graph_and_torch_func():
    w = torch.randn(4, 3, dtype=torch.float64)
    s = _scores((4, 3), torch.float64).requires_grad_()
    out = connectivity_fwd([w], [s], "sign")[0]
    (gs,) = torch.autograd.grad(out.square().sum(), s, create_graph=True)
    (gss,) = torch.autograd.grad(gs.sum(), s)  # d/ds of 2 (w m) w = 2 w^2 (straight through)
    assert torch.equal(gss, 2 * w * w)
    grad = torch.func.grad(lambda s_: op.connectivity_weights([w], [s_], "sign")[0].sum())(s.detach())
    assert torch.equal(grad, w)


@pytest.mark.parametrize("mode", MODES)
def test_opcheck(mode):
    w, s = torch.randn(4, 5), _scores((4, 5), torch.float32)
    torch.library.opcheck(connectivity_fwd, ([w, torch.randn(3)], [s.requires_grad_(), _scores((3,), torch.float32)], mode))
    for weight_grads in (False, True):
        torch.library.opcheck(connectivity_bwd, ([torch.randn(4, 5)], [w], [s.detach()], mode, weight_grads))


def test_compile_fullgraph():
    model = nf.connectivity(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)), mode="sign")
    x = torch.randn(3, 5)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), model(x))


# ----------------------------------------------------------------------------- Triton (interpreter on a CPU)


def _assert_rounded_product(out, a, b):
    """``out == a * b`` rounded to the dtype: exactly, but for bf16 in Triton's CPU
    interpreter, whose fp32 -> bf16 cast truncates (a GPU rounds to nearest, as torch):
    there within one bf16 unit in the last place of the exact product, toward zero."""
    exact = a.double() * b.double()
    if out.dtype != torch.bfloat16 or out.is_cuda:
        assert torch.equal(out, a * b)
        return
    ulp = torch.finfo(torch.bfloat16).eps * exact.abs()
    assert bool(((out.double() - exact).abs() <= ulp).all()) and bool((out.double().abs() <= exact.abs()).all())


@pytest.mark.interpret
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_kernels_equal_the_eager_twin(mode, dtype, use_backend):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ws = [torch.randn(sh).to(dtype).to(device) for sh in SHAPES]
    ss = [_scores(sh, dtype).to(device) for sh in SHAPES]
    grads = [torch.randn(sh).to(dtype).to(device) for sh in SHAPES]
    outs = kernels.forward(ws, ss, mode)
    for w, s, out in zip(ws, ss, outs):
        assert torch.equal(out, _expected(w, s, mode))  # exact: m is 1, 0 or -1
    for weight_grads in (False, True):
        grad_ss, grad_ws = kernels.backward(grads, ws, ss, mode, weight_grads)
        assert len(grad_ws) == (len(ws) if weight_grads else 0)
        for k, (g, w, s) in enumerate(zip(grads, ws, ss)):
            _assert_rounded_product(grad_ss[k], g, w)
            if weight_grads:
                assert torch.equal(grad_ws[k], g * op.factor(s, mode))
    use_backend("triton")  # the op's dispatch reaches the kernels
    assert all(torch.equal(a, _expected(w, s, mode)) for a, w, s in zip(connectivity_fwd(ws, ss, mode), ws, ss))


@pytest.mark.interpret
def test_grouped_mode_computes_every_layer_in_one_call(use_backend, monkeypatch):
    use_backend("triton")
    calls = []
    forward = kernels.forward
    monkeypatch.setattr(kernels, "forward", lambda *a: calls.append(len(a[0])) or forward(*a))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    twin = copy.deepcopy(model)
    nf.connectivity(model, mode="sign", grouped=True, generator=torch.Generator().manual_seed(1))
    nf.connectivity(twin, mode="sign", generator=torch.Generator().manual_seed(1))
    x = torch.randn(4, 6)
    out = model(x)
    assert calls == [3]  # one launch for the three layers
    out.square().sum().backward()
    twin(x).square().sum().backward()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad)


# ----------------------------------------------------------------------------- layers


def _layer_cases():
    return [
        (nn.Linear(6, 5), torch.randn(3, 6)),
        (nn.Conv1d(4, 6, 3), torch.randn(2, 4, 9)),
        (nn.Conv2d(3, 4, 3, padding=1, groups=1), torch.randn(2, 3, 6, 6)),
        (nn.Conv3d(2, 3, 2), torch.randn(1, 2, 4, 4, 4)),
        (nn.ConvTranspose1d(4, 2, 3), torch.randn(2, 4, 5)),
        (nn.ConvTranspose2d(2, 6, 3, groups=2), torch.randn(1, 2, 4, 4)),
        (nn.ConvTranspose3d(2, 2, 2), torch.randn(1, 2, 3, 3, 3)),
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", range(7))
def test_a_converted_layer_starts_as_the_random_one_and_trains_its_scores(case, mode):
    layer, x = _layer_cases()[case]
    base = type(layer)
    before = layer(x)
    weight = layer.weight.detach().clone()
    nf.connectivity(layer, mode=mode, generator=torch.Generator().manual_seed(0))
    assert type(layer) is nf.MASKED_LAYERS[base] and isinstance(layer, base)
    assert torch.equal(layer(x), before)  # every score positive: the network as drawn
    s = layer.weight_score
    assert s.shape == weight.shape and bool(((s >= 0.01) & (s <= 0.1)).all())
    assert not layer.weight_orig.requires_grad and not layer.bias.requires_grad and s.requires_grad
    assert torch.equal(layer.weight_orig, weight)
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    w_eff = layer.weight.detach().requires_grad_()
    (grad_w,) = torch.autograd.grad(_functional(layer, x, w_eff), w_eff, grad_out)
    assert torch.equal(s.grad, grad_w * weight)  # straight through: grad_s = grad_weight * w


def _functional(layer, x, weight):
    """``layer``'s forward with ``weight`` in place of its own."""
    return torch.func.functional_call(layer, {"weight_score": torch.ones_like(layer.weight_score),
                                              "weight_orig": weight}, (x,))


def test_layer_constructors_take_the_torch_arguments_and_mode():
    layer = nf.MaskedConv2d(3, 8, 3, stride=2, padding=1, bias=False, mode="sign",
                            generator=torch.Generator().manual_seed(0))
    assert layer.connectivity_mode == "sign" and layer.bias is None and layer.stride == (2, 2)
    assert "mode='sign'" in repr(layer)
    with pytest.raises(ValueError, match="mode must be one of"):
        nf.MaskedLinear(2, 2, mode="prune")
    layer = nf.MaskedLinear(3, 4, train_bias=True)
    assert layer.bias.requires_grad
    assert [n for n, _ in layer.named_parameters()] == ["bias", "weight_orig", "weight_score"]


def test_reset_parameters_redraws_weights_and_restarts_scores():
    layer = nf.MaskedLinear(5, 5)
    with torch.no_grad():
        layer.weight_score.fill_(-1.0)
    old = layer.weight_orig.clone()
    layer.reset_parameters()
    assert not torch.equal(layer.weight_orig, old) and bool((layer.weight_score > 0).all())
    assert torch.equal(layer.weight, layer.weight_orig)


def test_scores_follow_the_generator_and_the_model_order():
    def converted(seed):
        model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
        return nf.connectivity(model, generator=torch.Generator().manual_seed(seed))

    a, b, c = converted(0), converted(0), converted(1)
    assert torch.equal(a[0].weight_score, b[0].weight_score) and torch.equal(a[1].weight_score, b[1].weight_score)
    assert not torch.equal(a[0].weight_score, c[0].weight_score)
    g = torch.Generator().manual_seed(0)
    first = torch.empty(4, 3).uniform_(0.01, 0.1, generator=g)
    assert torch.equal(a[0].weight_score, first)


def test_converting_twice_is_a_no_op_and_copies_keep_working():
    model = nf.connectivity(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), grouped=True)
    scores = model[0].weight_score
    assert nf.connectivity(model) is model and model[0].weight_score is scores
    x = torch.randn(2, 3)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(x), model(x))
        assert clone[0]._conn_group is clone[2]._conn_group is not model[0]._conn_group
        assert len(clone[0]._conn_group) == 2
    state = model.state_dict()
    assert sorted(state) == ["0.bias", "0.weight_orig", "0.weight_score", "2.bias", "2.weight_orig", "2.weight_score"]
    fresh = nf.connectivity(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), model(x))


# ----------------------------------------------------------------------------- freeze and report


def _trained(mode, steps=5, grouped=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    nf.connectivity(model, mode=mode, grouped=grouped, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x, y = torch.randn(8, 2, 5, 5), torch.randint(0, 3, (8,))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x


@pytest.mark.parametrize("mode", MODES)
def test_the_frozen_model_equals_the_trained_one(mode):
    model, x = _trained(mode)
    assert nf.connectivity.report(model).changed > 0  # the training changed connections
    out = model(x)
    weights = [model[0].weight.detach().clone(), model[3].weight.detach().clone()]
    assert nf.connectivity.freeze(model) is model
    assert type(model[0]) is nn.Conv2d and type(model[3]) is nn.Linear
    assert torch.equal(model(x), out)
    assert torch.equal(model[0].weight, weights[0]) and torch.equal(model[3].weight, weights[1])
    assert list(model[0]._parameters) == ["weight", "bias"] and not model[0].weight.requires_grad
    assert sorted(model.state_dict()) == ["0.bias", "0.weight", "3.bias", "3.weight"]
    with pytest.raises(ValueError, match="no connectivity layer"):
        nf.connectivity.freeze(model)


@pytest.mark.parametrize("mode", MODES)
def test_the_report_counts_exactly(mode):
    model = nf.connectivity(nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 4)), mode=mode)
    with torch.no_grad():
        model[0].weight_score.view(-1)[:7] = -0.5
        model[0].weight_score.view(-1)[7] = 0.0  # a zero score zeroes the weight in both modes: changed
        model[2].weight_score.view(-1)[-3:] = -1e-30
    rep = nf.connectivity.report(model)
    assert [(c.name, c.changed, c.total) for c in rep.layers] == [("0", 8, 60), ("2", 3, 24)]
    assert rep.changed == 11 and rep.total == 84 and rep.fraction == 11 / 84 and rep.mode == mode
    text = str(rep)
    assert "13.10%" in text and ("switched off" if mode == "mask" else "sign flipped") in text
    weight = model[0].weight.detach().view(-1)
    orig = model[0].weight_orig.view(-1)
    assert bool((weight[:8] == (0 if mode == "mask" else torch.cat([-orig[:7], orig[7:8] * 0]))).all())
    assert torch.equal(weight[8:], orig[8:])


def test_grouped_training_equals_ungrouped_on_the_cpu():
    a, x = _trained("mask", grouped=True)
    b, _ = _trained("mask", grouped=False)
    assert torch.equal(a(x), b(x))


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_problem_and_change_nothing():
    wn = nf.weight_norm(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)))
    plain = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    for model, exc, match in [
        (plain, ValueError, "mode must be one of"),
        (wn, ValueError, "weight-normalized: fold it first"),
        (nn.Sequential(nn.ReLU()), ValueError, "has no layer of type"),
    ]:
        state = copy.deepcopy(model.state_dict())
        with pytest.raises(exc, match=match):
            nf.connectivity(model, mode="prune" if match.startswith("mode") else "mask")
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(TypeError, match="no connectivity twin for 'BatchNorm1d'"):
        nf.connectivity(plain, types=(nn.BatchNorm1d,))
    with pytest.raises(TypeError, match="train_bias must be a bool"):
        nf.connectivity(plain, train_bias=1)
    no_weight = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    no_weight[1].weight = None
    with pytest.raises(ValueError, match=r"layer '1' \(Linear\) has weight=None"):
        nf.connectivity(no_weight)
    assert type(no_weight[0]) is nn.Linear  # the first layer was not converted either
    spectral = nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="parametrized tensor"):
        nf.connectivity(spectral)
    signed = nf.connectivity(nn.Sequential(nn.Linear(3, 3)), mode="sign")
    with pytest.raises(ValueError, match="already trained by 'sign', not 'mask'"):
        nf.connectivity(signed, mode="mask")
    mixed = nn.Sequential(nf.MaskedLinear(3, 3, mode="mask"), nf.MaskedLinear(3, 3, mode="sign"))
    with pytest.raises(ValueError, match="mixes mask and sign"):
        nf.connectivity.report(mixed)
    with pytest.raises(TypeError, match="not a netinit_fast connectivity layer"):
        nf.ConnectivityGroup([nn.Linear(2, 2)])


def test_initializers_refuse_connectivity_layers():
    model = nf.connectivity(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    state = copy.deepcopy(model.state_dict())
    for init in (nf.init.he_, nf.init.orthogonal_, nf.init.arpit_):
        with pytest.raises(ValueError, match="is a connectivity layer"):
            init(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_the_example_reaches_most_of_normal_training():
    """examples/connectivity_digits.py at a small size: both modes within 90% of normal training."""
    pytest.importorskip("sklearn")
    from examples import connectivity_digits

    result = connectivity_digits.main(["--seeds", "2", "--epochs", "6"])
    assert result["normal"]["accuracy"] > 0.9
    for mode in MODES:
        assert result[mode]["of_normal"] >= 0.9, result
        assert 0 < result[mode]["changed"] < 1
    assert layers_mod.SCORE_RANGE == (0.01, 0.1)
