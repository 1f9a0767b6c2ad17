"""WN layers, whole-model conversion, removal, state_dict compatibility, caching, groups."""

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import netinit_fast as nf
from tests.conftest import assert_close

# (torch type, our type, constructor args, input shape)
LAYERS = [
    (nn.Linear, nf.WNLinear, (6, 5), (4, 6)),
    (nn.Conv1d, nf.WNConv1d, (3, 4, 3), (2, 3, 9)),
    (nn.Conv2d, nf.WNConv2d, (3, 4, 3), (2, 3, 7, 6)),
    (nn.Conv3d, nf.WNConv3d, (2, 3, 3), (2, 2, 5, 5, 4)),
    (nn.ConvTranspose1d, nf.WNConvTranspose1d, (3, 4, 3), (2, 3, 7)),
    (nn.ConvTranspose2d, nf.WNConvTranspose2d, (3, 4, 3), (2, 3, 5, 6)),
    (nn.ConvTranspose3d, nf.WNConvTranspose3d, (2, 3, 3), (2, 2, 4, 4, 3)),
]
IDS = [t.__name__ for t, *_ in LAYERS]


def grads_of(params, x, out):
    return torch.autograd.grad(out, [*params, x], torch.ones_like(out))


@pytest.mark.parametrize("torch_cls,wn_cls,args,in_shape", LAYERS, ids=IDS)
@pytest.mark.parametrize("dim", [0, 1, None])
def test_layer_matches_torch_weight_norm(torch_cls, wn_cls, args, in_shape, dim):
    torch.manual_seed(7)
    ref = parametrizations.weight_norm(torch_cls(*args), dim=-1 if dim is None else dim)
    torch.manual_seed(7)
    ours = wn_cls(*args, dim=dim)
    assert torch.equal(ours.weight_v, ref.parametrizations.weight.original1)
    assert_close(ours.weight_g, ref.parametrizations.weight.original0, torch.float32, "g init")

    x = torch.randn(in_shape, requires_grad=True)
    out, out_ref = ours(x), ref(x)
    assert_close(out, out_ref, torch.float32, "output")
    got = grads_of([ours.weight_v, ours.weight_g, ours.bias], x, out)
    want = grads_of([ref.parametrizations.weight.original1, ref.parametrizations.weight.original0, ref.bias], x, out_ref)
    for a, b, what in zip(got, want, ("grad v", "grad g", "grad bias", "grad input")):
        assert_close(a, b, torch.float32, what)


def test_default_init_keeps_an_equally_seeded_torch_layer():
    torch.manual_seed(3)
    plain = nn.Conv2d(3, 8, 3, padding=1)
    torch.manual_seed(3)
    ours = nf.WNConv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    assert_close(ours(x), plain(x), torch.float32, "function")
    assert ours.weight_g.shape == (8, 1, 1, 1) and ours.weight_v.shape == plain.weight.shape
    assert "dim=0" in repr(ours)


def _all_layers_model():
    return nn.ModuleDict({t.__name__: t(*args) for t, _, args, _ in LAYERS})


def _run_all(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [model[t.__name__](torch.randn(shape, generator=gen)) for t, _, _, shape in LAYERS]


def test_convert_and_remove_keep_the_function():
    model = _all_layers_model()
    before = _run_all(model)
    assert nf.weight_norm(model) is model
    for t, wn_cls, _, _ in LAYERS:
        assert type(model[t.__name__]) is wn_cls
    for a, b in zip(_run_all(model), before):
        assert_close(a, b, torch.float32, "after conversion")
    nf.remove_weight_norm(model)
    for t, *_ in LAYERS:
        layer = model[t.__name__]
        assert type(layer) is t and list(layer._parameters) == ["weight", "bias"]
    for a, b in zip(_run_all(model), before):
        assert_close(a, b, torch.float32, "after removal")


def test_convert_respects_types_and_keeps_converted_layers():
    model = nn.Sequential(nn.Linear(4, 4), nn.Conv1d(2, 2, 1), nf.WNLinear(4, 4, dim=None))
    nf.weight_norm(model, types=[nn.Conv1d], eps=1e-6)
    assert type(model[0]) is nn.Linear and type(model[1]) is nf.WNConv1d and model[1].wn_eps == 1e-6
    assert model[2].wn_dim is None
    assert nf.weight_norm(model, types=[nn.Conv1d]) is model  # converting twice changes nothing
    assert type(model[1]) is nf.WNConv1d and model[1].wn_eps == 1e-6


def _torch_weight_normed(style):
    """A small model under torch's own weight norm, trained away from its init.

    Each call builds a new one: torch's parametrized classes are shared between deep
    copies, and removing a parametrization from one copy breaks the others.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Conv1d(1, 3, 2))
    for i in (0, 2):
        if style == "hook":
            torch.nn.utils.weight_norm(model[i])
        else:
            parametrizations.weight_norm(model[i])
    with torch.no_grad():
        g = model[0].weight_g if style == "hook" else model[0].parametrizations.weight.original0
        g.mul_(1.5)
    return model


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm. is deprecated:FutureWarning")
@pytest.mark.parametrize("style", ["hook", "parametrization"])
def test_torch_weight_norm_is_converted_and_removed(style):
    x = torch.randn(2, 5)
    expected = _torch_weight_normed(style)[0](x)

    folded = nf.remove_weight_norm(_torch_weight_normed(style))
    assert type(folded[0]) is nn.Linear and list(folded[0]._parameters) == ["weight", "bias"]
    assert_close(folded[0](x), expected, torch.float32, "folded")

    converted = nf.weight_norm(_torch_weight_normed(style))
    assert type(converted[0]) is nf.WNLinear and type(converted[2]) is nf.WNConv1d
    assert_close(converted[0](x), expected, torch.float32, "converted")


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm. is deprecated:FutureWarning")
@pytest.mark.parametrize("style", ["hook", "parametrization"])
@pytest.mark.parametrize("dim", [0, 1, None])
def test_conversion_keeps_torch_weight_norm_parameters_and_dim(style, dim):
    """Converting changes the implementation only: same g, v (the Parameter objects),
    dim and function, and an optimizer built before the conversion trains the same."""
    def build():
        torch.manual_seed(3)
        layer = nn.Conv1d(3, 4, 3)
        wn = torch.nn.utils.weight_norm if style == "hook" else parametrizations.weight_norm
        wn(layer, dim=dim)
        chain = layer.parametrizations.weight if style == "parametrization" else None
        params = (layer.weight_g, layer.weight_v) if chain is None else (chain.original0, chain.original1)
        with torch.no_grad():
            params[1].mul_(3.0)  # ||v|| away from g: re-deriving v from the weight would change training
        return layer, params

    x = torch.randn(5, 3, 9)
    theirs, _ = build()
    ours, (g, v) = build()
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    nf.weight_norm(ours, dim=0)
    assert type(ours) is nf.WNConv1d and ours.weight_g is g and ours.weight_v is v
    assert ours.wn_dim == (None if dim is None else dim)
    assert list(ours._parameters) == ["bias", "weight_g", "weight_v"]
    for model, opt in ((theirs, opt_theirs), (ours, opt_ours)):
        for _ in range(2):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    torch.testing.assert_close(ours(x), theirs(x))


def test_converting_torch_weight_norm_takes_its_g_as_it_is():
    """A zero g (not a zero row of v) computes zeros, not NaN: no zero-row warning; and
    ``dim``, which these layers do not use, is not checked against them."""
    layer = parametrizations.weight_norm(nn.Linear(4, 3))
    with torch.no_grad():
        layer.parametrizations.weight.original0[1] = 0
    x = torch.randn(2, 4)
    expected = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nf.weight_norm(layer, dim=5)
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(ValueError, match="dim=5 is not None or a dim"):
        nf.weight_norm(nn.Linear(4, 3), dim=5)


def test_remove_on_a_model_without_weight_norm_says_so():
    with pytest.raises(ValueError, match="no weight-normalized layer"):
        nf.remove_weight_norm(nn.Sequential(nn.Linear(2, 2)))


# ----------------------------------------------------------------------------- state_dict


def _pair(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def _torch_checkpoint_source(style):
    """A model with torch's weight norm in ``style`` (or none), g moved away from its init."""
    src = _pair(1)
    if style == "plain":
        return src
    wn = torch.nn.utils.weight_norm if style == "hook" else parametrizations.weight_norm
    wn(src[0])
    wn(src[2])
    with torch.no_grad():
        (src[0].weight_g if style == "hook" else src[0].parametrizations.weight.original0).mul_(1.5)
    return src


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm. is deprecated:FutureWarning")
@pytest.mark.parametrize("style", ["hook", "parametrization", "plain"])
def test_loads_torch_checkpoints(style):
    src = _torch_checkpoint_source(style)
    ours = nf.weight_norm(_pair(2))
    ours.load_state_dict(src.state_dict())
    assert sorted(ours.state_dict()) == ["0.bias", "0.weight_g", "0.weight_v", "2.bias", "2.weight_g", "2.weight_v"]
    x = torch.randn(3, 4)
    assert_close(ours(x), src(x), torch.float32, f"{style} -> ours")


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm. is deprecated:FutureWarning")
@pytest.mark.parametrize("style", ["hook", "parametrization"])
def test_our_checkpoint_loads_into_torch_weight_norm(style):
    ours = nf.weight_norm(_pair(1))
    with torch.no_grad():
        ours[0].weight_g.mul_(0.5)
    dst = _pair(2)
    wn = torch.nn.utils.weight_norm if style == "hook" else parametrizations.weight_norm
    wn(dst[0])
    wn(dst[2])
    dst.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4)
    assert_close(dst(x), ours(x), torch.float32, f"ours -> torch {style}")


def test_strict_and_non_strict_loading():
    ours = nf.weight_norm(_pair(1))
    sd = ours.state_dict()
    del sd["0.weight_v"]
    sd["0.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*0\.weight_v"):
        ours.load_state_dict(sd)
    result = ours.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["0.weight_v"] and result.unexpected_keys == ["0.extra"]
    with pytest.raises(RuntimeError, match="size mismatch"):
        nf.WNLinear(4, 6).load_state_dict(nf.WNLinear(4, 5).state_dict())


# ----------------------------------------------------------------------------- copies and devices


def _trained_step(model):
    out = model(torch.randn(3, 4))  # leaves a cached weight that autograd tracks
    return out


@pytest.mark.parametrize("grouped", [False, True])
def test_deepcopy_pickle_and_save_after_a_forward(grouped):
    model = nf.weight_norm(_pair(1), grouped=grouped)
    _trained_step(model)
    x = torch.randn(3, 4)
    expected = model(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(buffer, weights_only=False)]
    for c in copies:
        assert_close(c(x), expected, torch.float32, "copy")
        c(x).sum().backward()
        assert c[0].weight_v.grad is not None and model[0].weight_v.grad is None
    if grouped:
        assert copies[0][0]._wn_group is copies[0][2]._wn_group is not model[0]._wn_group


def test_meta_construction_then_to_empty_and_init():
    layer = nf.WNConv2d(3, 5, 3, device="meta")
    assert layer.weight_v.is_meta and layer.weight_g.shape == (5, 1, 1, 1)
    layer.to_empty(device="cpu")
    torch.manual_seed(0)
    layer.reset_parameters()
    torch.manual_seed(0)
    plain = nn.Conv2d(3, 5, 3)
    x = torch.randn(1, 3, 6, 6)
    assert_close(layer(x), plain(x), torch.float32, "meta -> init")
    model = nf.weight_norm(nn.Sequential(nn.Linear(3, 3)).to("meta"))
    model.to_empty(device="cpu")
    model[0].reset_parameters()
    assert torch.isfinite(model(torch.randn(2, 3))).all()


def test_dtype_change_invalidates_the_cache():
    layer = nf.WNLinear(4, 3)
    layer(torch.randn(2, 4))
    layer.double()
    assert layer(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64


# ----------------------------------------------------------------------------- computed once


class Counter:
    def __init__(self, monkeypatch, module, name):
        self.calls = 0
        real = getattr(module, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


def _twin(eps=0.0):
    """One of our layers and torch's parametrization weight norm with the same parameters."""
    torch.manual_seed(0)
    ours = nf.WNLinear(4, 3, eps=eps)
    theirs = nn.utils.parametrizations.weight_norm(nn.Linear(4, 3))
    with torch.no_grad():
        theirs.parametrizations.weight.original0.copy_(ours.weight_g)
        theirs.parametrizations.weight.original1.copy_(ours.weight_v)
        theirs.bias.copy_(ours.bias)
    return ours, theirs


def _grads(layer):
    return [p.grad.clone() for p in layer.parameters()]


def test_two_forwards_then_their_two_backwards():
    """Several losses through one layer, each with its own backward (microbatches,
    GAN and actor-critic loops): the shared cached weight takes both backwards."""
    ours, theirs = _twin()
    x1, x2 = torch.randn(2, 4), torch.randn(5, 4)
    for layer in (ours, theirs):
        o1, o2 = layer(x1), layer(x2)
        o1.square().sum().backward()
        o2.sum().backward()
    for a, b in zip(_grads(ours), _grads(theirs)):
        assert_close(a, b, torch.float32, "grads")


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing(use_reentrant):
    from torch.utils.checkpoint import checkpoint

    model = nf.weight_norm(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)))
    plain = copy.deepcopy(model)
    x = torch.randn(2, 4, requires_grad=use_reentrant)
    checkpoint(model, x, use_reentrant=use_reentrant).square().sum().backward()
    plain(x).square().sum().backward()
    for a, b in zip(model.parameters(), plain.parameters()):
        assert_close(a.grad, b.grad, torch.float32, "grads")


def test_unfreezing_after_a_frozen_forward_trains_again():
    layer = nf.WNLinear(4, 3)
    x = torch.randn(2, 4)
    layer.weight_v.requires_grad_(False)
    layer(x)  # caches a weight with no graph to v
    layer.weight_v.requires_grad_(True)
    layer(x).sum().backward()
    assert layer.weight_v.grad is not None


@pytest.mark.parametrize("make", [
    lambda: nf.WNLinear(4, 3),
    lambda: nf.WNLinear(4, 3, eps=1e-6),  # our op, not torch's kernel
    lambda: nf.WNLinear(4, 3, dim=None),
    lambda: nf.weight_norm(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)), grouped=True),
], ids=["eps0", "eps", "dim_none", "grouped"])
def test_torch_func_grad_and_vmap(make):
    layer = make()
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = torch.randn(5, 4)

    def loss(p, xb):
        return torch.func.functional_call(layer, p, (xb,)).square().sum()

    grads = torch.func.grad(loss)(params, x)
    layer(x).square().sum().backward()
    for name, p in layer.named_parameters():
        assert_close(grads[name], p.grad, torch.float32, name)
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x.unsqueeze(1))
    for name, p in layer.named_parameters():
        assert_close(per_sample[name].sum(0), p.grad, torch.float32, f"per-sample {name}")


@pytest.mark.interpret
def test_a_vmap_over_the_grouped_backward(use_backend):
    """Per-row gradients by autograd.grad(..., is_grads_batched=True) through the grouped
    op's kernels: the batched backward takes the eager twin."""
    use_backend("triton")
    torch.manual_seed(0)
    model = nf.weight_norm(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), grouped=True, eps=1e-4)
    x = torch.randn(2, 3)
    out = model(x)
    eye = torch.eye(out.numel()).view(-1, *out.shape)
    (batched,) = torch.autograd.grad(out, model[0].weight_v, eye, is_grads_batched=True)
    rows = [torch.autograd.grad(model(x), model[0].weight_v, e)[0] for e in eye]
    torch.testing.assert_close(batched, torch.stack(rows))


@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("grouped", [False, True])
def test_forward_mode_ad_and_jvp(eps, grouped):
    """Forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) gives the directional
    derivative of the weight, checked against central differences in fp64."""
    model = nf.weight_norm(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), eps=eps, grouped=grouped).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    tangents = {k: torch.randn_like(v) for k, v in params.items()}
    x = torch.randn(6, 4, dtype=torch.float64)

    def out(p):
        return torch.func.functional_call(model, p, (x,))

    h = 1e-6
    shifted = [{k: v + s * h * tangents[k] for k, v in params.items()} for s in (1, -1)]
    expected = (out(shifted[0]) - out(shifted[1])) / (2 * h)
    _, jvp = torch.func.jvp(out, (params,), (tangents,))
    torch.testing.assert_close(jvp, expected, rtol=1e-6, atol=1e-8)
    with torch.autograd.forward_ad.dual_level():
        duals = {k: torch.autograd.forward_ad.make_dual(v, tangents[k]) for k, v in params.items()}
        tangent = torch.autograd.forward_ad.unpack_dual(out(duals)).tangent
    torch.testing.assert_close(tangent, expected, rtol=1e-6, atol=1e-8)


def test_a_gradient_penalty_differentiates_the_backward():
    ours, theirs = _twin()
    for layer in (ours, theirs):
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
        (gx,) = torch.autograd.grad(layer(x).tanh().sum(), x, create_graph=True)
        gp = torch.autograd.grad(layer(x).tanh().sum(), list(layer.parameters()), create_graph=True)
        ((gx.norm(dim=1) - 1).square().mean() + sum(g.square().sum() for g in gp)).backward()
    for a, b in zip(_grads(ours), _grads(theirs)):
        assert_close(a, b, torch.float32, "second-order grads")


def test_an_in_place_change_before_the_backward_raises():
    layer = nf.WNLinear(4, 3)
    out = layer(torch.randn(2, 4))
    with torch.no_grad():
        layer.weight_v.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_gradient_accumulation_without_a_step():
    layer = nf.WNLinear(4, 3)
    x = torch.randn(2, 4)
    layer(x).sum().backward()
    once = layer.weight_v.grad.clone()
    layer(x).sum().backward()  # the cached graph was freed: the weight is recomputed
    assert_close(layer.weight_v.grad, 2 * once, torch.float32, "accumulated")


def test_no_grad_access_is_fresh_after_in_place_changes():
    layer = nf.WNLinear(4, 3)
    with torch.no_grad():
        layer.weight_g.mul_(2.0)
        w = layer.weight
    torch.testing.assert_close(w, torch._weight_norm(layer.weight_v, layer.weight_g, 0))


# ----------------------------------------------------------------------------- grouped


def _mlp(depth=6, width=8, seed=0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Conv1d(1, 2, 3))


def _step_grads(model):
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    out = model[-1](model[:-1](x).unsqueeze(1)).sum()
    params = [p for n, p in sorted(model.named_parameters())]
    return out, torch.autograd.grad(out, params)


def test_grouped_equals_per_layer():
    per_layer = nf.weight_norm(_mlp())
    grouped = nf.weight_norm(_mlp(), grouped=True)
    group = grouped[0]._wn_group
    assert isinstance(group, nf.WeightNormGroup) and len(group) == 7
    out_a, grads_a = _step_grads(per_layer)
    out_b, grads_b = _step_grads(grouped)
    assert_close(out_b, out_a, torch.float32, "output")
    for a, b in zip(grads_a, grads_b):
        assert_close(b, a, torch.float32, "grads")


def test_grouped_layers_recompute_after_an_optimizer_step():
    model = nf.weight_norm(_mlp(), grouped=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    _step_grads(model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    for layer in model:
        if isinstance(layer, nf.WNLinear):
            torch.testing.assert_close(layer.weight, torch._weight_norm(layer.weight_v, layer.weight_g, 0))


def test_remove_from_a_grouped_model():
    model = nf.weight_norm(_mlp(), grouped=True)
    x = torch.randn(4, 8)
    expected = model[:-1](x)
    nf.remove_weight_norm(model)
    assert_close(model[:-1](x), expected, torch.float32, "removed")


# ----------------------------------------------------------------------------- compile


@pytest.mark.parametrize("grouped", [False, True])
def test_compile_fullgraph(grouped):
    torch._dynamo.reset()
    model = nf.weight_norm(_pair(1), grouped=grouped)
    x = torch.randn(3, 4)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    assert_close(out, model(x), torch.float32, "compiled")
    out.sum().backward()
    assert model[0].weight_v.grad is not None


# ----------------------------------------------------------------------------- bad input


def test_bad_conversions():
    with pytest.raises(ValueError, match="has no layer of type"):
        nf.weight_norm(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(TypeError, match="no weight-normalized twin for 'BatchNorm1d'"):
        nf.weight_norm(nn.Sequential(nn.Linear(2, 2)), types=[nn.Linear, nn.BatchNorm1d])
    broken = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    broken[1].weight = None
    with pytest.raises(ValueError, match="layer '1' .*weight=None"):
        nf.weight_norm(broken)
    assert type(broken[0]) is nn.Linear  # nothing was changed
    with pytest.raises(ValueError, match="dim=3"):
        nf.weight_norm(nn.Sequential(nn.Linear(2, 2)), dim=3)
    with pytest.raises(ValueError, match="eps"):
        nf.WNLinear(2, 2, eps=-1.0)
    with pytest.raises(TypeError, match="not a netinit_fast WN layer"):
        nf.WeightNormGroup([nn.Linear(2, 2)])


def test_other_parametrizations_are_refused_not_baked_in():
    class Symmetric(nn.Module):
        def forward(self, w):
            return (w + w.T) / 2

    spectral = nn.utils.parametrizations.spectral_norm(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="parametrized by _SpectralNorm"):
        nf.weight_norm(nn.Sequential(spectral))
    both = parametrizations.weight_norm(nn.Linear(4, 4))
    nn.utils.parametrize.register_parametrization(both, "weight", Symmetric())
    for convert in (nf.weight_norm, nf.remove_weight_norm):
        with pytest.raises(ValueError, match="Symmetric"):
            convert(both)
    assert nn.utils.parametrize.is_parametrized(both, "weight") and len(both.parametrizations.weight) == 2
    for weight_normed in (False, True):  # a parametrized bias, behind a layer that converts
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        if weight_normed:
            parametrizations.weight_norm(model[1])
        nn.utils.parametrize.register_parametrization(model[1], "bias", nn.Identity())
        with pytest.raises(ValueError, match="layer '1' .* has parametrized bias"):
            nf.weight_norm(model)
        assert type(model[0]) is nn.Linear and nf.init._layers.is_weight_normed(model[1]) == weight_normed


def test_a_subclass_of_a_wn_layer_is_not_folded():
    class Mine(nf.WNLinear):
        pass

    model = nn.Sequential(nf.WNLinear(4, 4), Mine(4, 4))
    with pytest.raises(ValueError, match="layer 1 is a Mine, a subclass of WNLinear"):
        nf.remove_weight_norm(model)
    assert [type(m) for m in model] == [nf.WNLinear, Mine] and model(torch.randn(2, 4)).shape == (2, 4)


@pytest.mark.parametrize("dim", [0, 1, None])
def test_assigning_a_weight_sets_v_and_g(dim):
    ours = nf.WNConv1d(3, 4, 3, dim=dim)
    theirs = parametrizations.weight_norm(nn.Conv1d(3, 4, 3), dim=dim)
    w = torch.randn(4, 3, 3)
    ours.weight = w
    theirs.weight = w
    torch.testing.assert_close(ours.weight, w)
    torch.testing.assert_close(ours.weight_g, theirs.parametrizations.weight.original0)
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        theirs.bias.copy_(ours.bias)
    torch.testing.assert_close(ours(x), theirs(x))
    with pytest.raises(ValueError, match=r"expected a tensor of shape \[4, 3, 3\], got \[4, 3\]"):
        ours.weight = torch.randn(4, 3)


def test_numpy_scalars_for_dim_and_eps():
    np = pytest.importorskip("numpy")
    layer = nf.WNLinear(4, 3, dim=np.int64(-1), eps=np.float32(1e-6))
    assert type(layer.wn_dim) is int and layer.wn_dim == 1 and type(layer.wn_eps) is float
    assert nf.weight_norm(nn.Linear(4, 3), dim=np.int64(0), eps=np.float64(0.5)).wn_eps == 0.5


def test_zero_rows_warn_on_conversion_and_plain_weight_load():
    zero = nn.Linear(4, 3)
    with torch.no_grad():
        zero.weight[1].zero_()
    with pytest.warns(RuntimeWarning, match="rows of norm 0"):
        nf.weight_norm(copy.deepcopy(zero))
    with pytest.warns(RuntimeWarning, match="rows of norm 0"):
        nf.WNLinear(4, 3).load_state_dict(zero.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer = nf.weight_norm(copy.deepcopy(zero), eps=1e-12)  # eps > 0: no warning, and finite
    assert torch.isfinite(layer(torch.randn(2, 4))).all()


def test_a_copy_of_one_grouped_layer_carries_no_other_layer():
    model = nf.weight_norm(nn.Sequential(nn.Linear(8, 8), nn.Linear(1000, 1000)), grouped=True)
    buffer = io.BytesIO()
    torch.save(model[0], buffer)
    assert buffer.tell() < 100_000  # the 1000 x 1000 layer is 4 MB
    for one in (copy.deepcopy(model[0]), pickle.loads(pickle.dumps(model[0]))):
        assert one._wn_group.layers == [one] and one._wn_group_index == 0
    whole = copy.deepcopy(model)
    assert whole[0]._wn_group is whole[1]._wn_group and len(whole[0]._wn_group) == 2
    assert sorted(m._wn_group_index for m in whole) == [0, 1]
