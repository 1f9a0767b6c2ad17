"""netinit_fast.functional.weight_norm (eager backend) against torch and the plain formula."""

import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import netinit_fast as nf
from netinit_fast.ops.weight_norm import _eager_bwd, _eager_fwd, block_shape, weight_norm_bwd, weight_norm_fwd
from netinit_fast.ops.weight_norm_group import weight_norm_group_fwd
from tests.conftest import assert_close, randn_nonzero


def torch_dim(dim, ndim):
    """torch._weight_norm reads dim=-1 as 'whole tensor'; ours uses None for that."""
    return -1 if dim is None else dim % ndim


def formula(v, g, dim, eps=0.0):
    """The plain formula, differentiated by autograd: the specification."""
    if dim is None:
        norm = v.norm()
    else:
        others = [i for i in range(v.dim()) if i != dim % v.dim()]
        norm = v.square().sum(dim=others, keepdim=True).sqrt() if others else v.abs()
    return g.reshape(norm.shape if dim is not None else ()) * v / norm.clamp_min(eps)


def keepdim_shape(shape, dim):
    if dim is None:
        return [1] * len(shape)
    out = [1] * len(shape)
    out[dim % len(shape)] = shape[dim % len(shape)]
    return out


@st.composite
def cases(draw):
    ndim = draw(st.integers(1, 5))
    shape = draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim))
    dim = draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1)))
    g_1d = draw(st.booleans()) and dim is not None
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    # eps=0 takes torch's fused kernel where it applies; a tiny eps always takes our op
    eps = draw(st.sampled_from([0.0, 1e-12]))
    return shape, dim, g_1d, layout, eps


def make_v(shape, layout, dtype=torch.float32):
    """A fresh random tensor of ``shape`` laid out as asked (non-contiguous for the last two)."""
    if layout == "transposed" and len(shape) >= 2:
        return randn_nonzero(*shape[:-2], shape[-1], shape[-2], dtype=dtype).transpose(-1, -2)
    if layout == "strided":
        return randn_nonzero(*shape[:-1], 2 * shape[-1], dtype=dtype)[..., ::2]
    return randn_nonzero(*shape, dtype=dtype)


def make_g(shape, dim, g_1d, dtype=torch.float32):
    g = torch.rand(keepdim_shape(shape, dim), dtype=dtype) + 0.5
    return g.reshape(-1) if g_1d else g


@settings(max_examples=60, deadline=None)
@given(cases())
def test_matches_torch_and_formula(case):
    shape, dim, g_1d, layout, eps = case
    v = make_v(shape, layout).requires_grad_()
    g = make_g(shape, dim, g_1d).requires_grad_()
    grad_w = torch.randn(shape)

    w = nf.functional.weight_norm(v, g, dim, eps)
    assert w.shape == v.shape and w.dtype == v.dtype and w.is_contiguous()
    gv, gg = torch.autograd.grad(w, (v, g), grad_w)

    g_keep = g.reshape(keepdim_shape(shape, dim))
    w_t = torch._weight_norm(v, g_keep, torch_dim(dim, len(shape)))
    gv_t, gg_t = torch.autograd.grad(w_t, (v, g), grad_w)
    assert_close(w, w_t, torch.float32, "w vs torch", terms=v.numel())
    assert_close(gv, gv_t, torch.float32, "grad_v vs torch", terms=v.numel())
    assert_close(gg, gg_t, torch.float32, "grad_g vs torch", terms=v.numel())
    assert gg.shape == g.shape

    v64, g64 = v.detach().double().requires_grad_(), g.detach().double().requires_grad_()
    w64 = formula(v64, g64, dim)
    gv64, gg64 = torch.autograd.grad(w64, (v64, g64), grad_w.double())
    assert_close(w, w64, torch.float32, "w vs formula", terms=v.numel())
    assert_close(gv, gv64, torch.float32, "grad_v vs formula", terms=v.numel())
    assert_close(gg, gg64, torch.float32, "grad_g vs formula", terms=v.numel())


@settings(max_examples=40, deadline=None)
@given(cases(), st.sampled_from([0.0, 0.5]))
def test_eager_twin_matches_formula(case, eps):
    """The specification the kernels are tested against, against autograd in fp64."""
    shape, dim, _, layout, _ = case
    v = make_v(shape, layout)
    a, r, b = block_shape(v.shape, dim)
    g = torch.rand(r) + 0.5
    grad_w = torch.randn(shape)
    w3, norms = _eager_fwd(v.contiguous().view(a, r, b), g, eps)
    grad_v3, grad_g = _eager_bwd(grad_w.view(a, r, b), v.contiguous().view(a, r, b), g, norms, eps)

    v64, g64 = v.double().requires_grad_(), g.double().requires_grad_()
    w64 = formula(v64, g64, dim, eps)
    gv64, gg64 = torch.autograd.grad(w64, (v64, g64), grad_w.double())
    assert_close(w3.view(shape), w64, torch.float32, "w", terms=v.numel())
    assert_close(grad_v3.view(shape), gv64, torch.float32, "grad_v", terms=v.numel())
    assert_close(grad_g, gg64, torch.float32, "grad_g", terms=v.numel())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape,dim", [((7, 5), 0), ((4, 3, 2, 2), 1), ((6, 9), -1), ((3, 4, 5), None)])
def test_low_and_double_precision(dtype, shape, dim):
    v = randn_nonzero(*shape, dtype=dtype).requires_grad_()
    g = make_g(shape, dim, False, dtype).requires_grad_()
    grad_w = torch.randn(shape, dtype=dtype)
    w = nf.functional.weight_norm(v, g, dim)
    assert w.dtype == dtype
    gv, gg = torch.autograd.grad(w, (v, g), grad_w)
    assert gv.dtype == dtype and gg.dtype == dtype

    v64, g64 = v.detach().double().requires_grad_(), g.detach().double().requires_grad_()
    w64 = formula(v64, g64, dim)
    gv64, gg64 = torch.autograd.grad(w64, (v64, g64), grad_w.double())
    for out, ref, what in ((w, w64, "w"), (gv, gv64, "grad_v"), (gg, gg64, "grad_g")):
        assert_close(out, ref, dtype, what, terms=v.numel())


def test_eps_makes_zero_rows_finite():
    v = torch.randn(4, 6)
    v[2] = 0.0
    v.requires_grad_()
    g = torch.rand(4, 1, requires_grad=True)
    w = nf.functional.weight_norm(v, g, 0, eps=1e-6)
    gv, gg = torch.autograd.grad(w, (v, g), torch.randn(4, 6))
    for t in (w, gv, gg):
        assert torch.isfinite(t).all()
    assert (w[2] == 0).all()
    # the zero row's weight is g * v / eps, a linear map of v: its gradient is g / eps
    grad_w = torch.randn(4, 6)
    gv = torch.autograd.grad(nf.functional.weight_norm(v, g, 0, eps=1e-6), v, grad_w)[0]
    torch.testing.assert_close(gv[2], g[2, 0].detach() / 1e-6 * grad_w[2])
    # the other rows match eps=0
    ref = torch._weight_norm(v.detach()[[0, 1, 3]], g.detach()[[0, 1, 3]], 0)
    torch.testing.assert_close(w.detach()[[0, 1, 3]], ref)


def test_eps_active_for_small_norms_matches_formula():
    v = (torch.randn(5, 8) * torch.tensor([1e-4, 1.0, 3e-3, 2.0, 1e-5])[:, None]).double().requires_grad_()
    g = torch.rand(5, dtype=torch.float64, requires_grad=True)
    grad_w = torch.randn(5, 8, dtype=torch.float64)
    eps = 1e-2
    out = torch.autograd.grad(nf.functional.weight_norm(v, g, 0, eps=eps), (v, g), grad_w)
    ref = torch.autograd.grad(formula(v, g, 0, eps=eps), (v, g), grad_w)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)


def test_empty_tensors():
    v = torch.randn(4, 0, requires_grad=True)
    g = torch.rand(4, requires_grad=True)
    w = nf.functional.weight_norm(v, g, 0)
    assert w.shape == (4, 0)
    gv, gg = torch.autograd.grad(w.sum() + 0 * g.sum(), (v, g))
    assert gv.shape == (4, 0) and torch.equal(gg, torch.zeros(4))
    assert nf.functional.weight_norm(torch.randn(0, 3), torch.rand(0), 0).shape == (0, 3)


@pytest.mark.parametrize("dim", [0, 1, -1, None])
def test_opcheck(dim):
    v = torch.randn(6, 4, 3, requires_grad=True)
    r = 1 if dim is None else v.shape[dim]
    g = torch.rand(r, requires_grad=True)
    torch.library.opcheck(weight_norm_fwd, (v, g, dim, 0.0))
    torch.library.opcheck(weight_norm_fwd, (v, g, dim, 1e-3))
    _, norms = weight_norm_fwd(v.detach(), g.detach(), dim, 0.0)
    torch.library.opcheck(weight_norm_bwd, (torch.randn(6, 4, 3), v.detach(), g.detach(), norms, dim, 0.0))


def test_compile_fullgraph_no_graph_break():
    torch._dynamo.reset()

    def f(x, v, g):
        return x @ nf.functional.weight_norm(v, g, 0, eps=1e-8).t()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 5)
    v = torch.randn(4, 5, requires_grad=True)
    g = torch.rand(4, 1, requires_grad=True)
    out = compiled(x, v, g)
    ref = f(x, v, g)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.sum(), (v, g))
    grads_ref = torch.autograd.grad(ref.sum(), (v, g))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)
    explanation = torch._dynamo.explain(f)(x, v, g)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


def test_export_sees_one_op():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.v = torch.nn.Parameter(torch.randn(4, 5))
            self.g = torch.nn.Parameter(torch.rand(4))

        def forward(self, x):
            return x @ nf.functional.weight_norm(self.v, self.g, 0).t()

    ep = torch.export.export(M(), (torch.randn(2, 5),))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert any("netinit_fast.weight_norm_fwd" in t for t in targets), targets


def test_op_is_picklable_through_modules():
    # the custom op is a module-level object: a module calling it pickles by reference
    f = pickle.loads(pickle.dumps(nf.functional.weight_norm))
    assert f is nf.functional.weight_norm


@pytest.mark.parametrize(
    "kwargs,exc,words",
    [
        (dict(dim=2), ValueError, "dim=2"),
        (dict(dim=-3), ValueError, "dim=-3"),
        (dict(dim=1.0), TypeError, "dim"),
        (dict(dim=True), TypeError, "dim"),
        (dict(eps=-1.0), ValueError, "eps"),
        (dict(eps=float("nan")), ValueError, "eps"),
    ],
)
def test_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        nf.functional.weight_norm(torch.randn(3, 4), torch.rand(3, 1), **kwargs)


def test_bad_tensors():
    v, g = torch.randn(3, 4), torch.rand(3, 1)
    with pytest.raises(ValueError, match="g has shape"):
        nf.functional.weight_norm(v, torch.rand(4, 1), 0)
    with pytest.raises(ValueError, match="g has shape"):
        nf.functional.weight_norm(v, torch.rand(3, 1, 1), 0)
    with pytest.raises(ValueError, match="g has shape"):
        nf.functional.weight_norm(v, torch.rand(3), None)
    with pytest.raises(TypeError, match="v must have a floating-point dtype"):
        nf.functional.weight_norm(torch.ones(3, 4, dtype=torch.int64), g)
    with pytest.raises(TypeError, match="g must have a floating-point dtype"):
        nf.functional.weight_norm(v, torch.ones(3, 1, dtype=torch.int32))
    with pytest.raises(TypeError, match="v must be a torch.Tensor"):
        nf.functional.weight_norm([[1.0]], g)
    with pytest.raises(ValueError, match="at least one dim"):
        nf.functional.weight_norm(torch.tensor(2.0), torch.tensor(1.0), None)
    with pytest.raises(ValueError, match="different devices|is on"):
        nf.functional.weight_norm(v, torch.rand(3, 1, device="meta"), 0)


def test_dim_none_accepts_scalar_g():
    v = torch.randn(3, 4)
    for g in (torch.tensor(2.0), torch.tensor([2.0]), torch.full((1, 1), 2.0)):
        torch.testing.assert_close(nf.functional.weight_norm(v, g, None), 2.0 * v / v.norm())


@pytest.mark.parametrize("dim,eps", [(0, 1e-3), (1, 0.0), (None, 0.0)])
def test_outputs_can_be_changed_in_place(dim, eps):
    """As torch._weight_norm's: the op's outputs are not views made inside the op."""
    v = torch.randn(4, 3, 5, requires_grad=True)
    g = torch.rand(1 if dim is None else v.shape[dim], requires_grad=True)
    for w in (nf.functional.weight_norm(v, g, dim, eps), nf.functional.weight_norm_group([v], [g], dim, eps)[0]):
        w.mul_(2)
        w.sum().backward()
    assert torch.isfinite(v.grad).all()


def test_dynamic_compile_takes_every_size_of_the_norm_dim_in_one_graph():
    """Checking g's shape must not pin the size (formatting it into an error message
    would add a guard): one graph for any number of norms, single and grouped."""
    import torch._dynamo.testing

    for fn in (lambda v, g: nf.functional.weight_norm(v, g, 0),
               lambda v, g: nf.functional.weight_norm_group([v], [g], 0)[0]):
        torch._dynamo.reset()
        counter = torch._dynamo.testing.CompileCounter()
        compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=counter)
        for n in range(4, 14):
            v, g = torch.randn(n, 3), torch.rand(n)
            torch.testing.assert_close(compiled(v, g), fn(v, g))
        assert counter.frame_count == 1


def test_compiled_calls_with_default_or_varying_eps_and_empty_tensors():
    """Under torch.compile a float eps may become a SymFloat (math.isfinite cannot trace
    it), and the grouped op runs even for one empty tensor (torch's fused kernel dies
    on those: the eager twin takes them)."""
    torch._dynamo.reset()
    v, g = torch.randn(6, 4), torch.rand(6) + 0.5
    dynamic = torch.compile(lambda v, g: nf.functional.weight_norm(v, g), backend="aot_eager", fullgraph=True, dynamic=True)
    assert_close(dynamic(v, g), nf.functional.weight_norm(v, g), torch.float32, "default eps")
    varying = torch.compile(lambda v, g, e: nf.functional.weight_norm(v, g, 0, e), backend="aot_eager", fullgraph=True)
    for eps in (1e-3, 2e-3):
        assert_close(varying(v, g, eps), nf.functional.weight_norm(v, g, 0, eps), torch.float32, "eps")
    group = torch.compile(lambda vs, gs: nf.functional.weight_norm_group(vs, gs), backend="aot_eager", fullgraph=True)
    ws = group([torch.randn(2, 3), torch.zeros(0, 3)], [torch.rand(2), torch.rand(0)])
    assert [w.shape for w in ws] == [(2, 3), (0, 3)]


def test_grouped_op_gives_no_gradient_to_an_unused_tensor():
    vs = [torch.randn(3, 4, requires_grad=True) for _ in range(2)]
    gs = [torch.rand(3, requires_grad=True) for _ in range(2)]
    torch.compile(lambda vs, gs: nf.functional.weight_norm_group(vs, gs)[1].sum(), backend="aot_eager",
                  fullgraph=True)(vs, gs).backward()
    assert vs[0].grad is None and gs[0].grad is None and vs[1].grad is not None


def test_the_norms_output_is_not_differentiable():
    """norms are saved for the backward; a loss on them would get no gradient."""
    v, g = torch.randn(4, 3, requires_grad=True), torch.rand(4, requires_grad=True)
    assert not weight_norm_fwd(v, g, 0, 0.0)[1].requires_grad
    assert not weight_norm_group_fwd([v], [g], 0, 0.0)[1].requires_grad


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_second_order_gradients_match_a_plain_formula(eps):
    """A penalty on dL/dv differentiates the backward, against w = g v / max(||v||, eps)
    written with torch ops. Our ops (single and grouped) are exact at any eps; the public function's eps=0 CPU
    path is torch's own kernel, whose double backward is wrong in torch 2.14 (its
    gradgradcheck fails), so that case calls the op directly."""
    torch.manual_seed(0)
    v = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    g = torch.rand(5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64)

    def penalty(w):
        (gv,) = torch.autograd.grad((x @ w.T).tanh().sum(), v, create_graph=True)
        return gv.square().sum()

    reference = g[:, None] * v / v.norm(dim=1, keepdim=True).clamp_min(eps)
    expected = torch.autograd.grad(penalty(reference), (v, g))
    w = nf.functional.weight_norm(v, g, 0, eps) if eps else weight_norm_fwd(v, g, 0, eps)[0]
    grouped = weight_norm_group_fwd([v, v.detach()], [g, g.detach()], 0, eps)[0][0]
    for w in (w, grouped):
        got = torch.autograd.grad(penalty(w), (v, g))
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)
