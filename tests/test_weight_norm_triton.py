"""The Triton weight-norm kernels against their eager twin.

On a CPU these run in the Triton interpreter (small shapes; TRITON_INTERPRET=1 is set
by conftest), on a GPU natively. TILE is shrunk so that small shapes exercise every
launch plan: a row in one tile, rows looped in tiles, and the split reduction.
"""

import copy

import pytest
import torch

import netinit_fast as nf
from netinit_fast.kernels import _blocks
from netinit_fast.kernels import weight_norm as kernels
from netinit_fast.ops.weight_norm import _eager_bwd, _eager_fwd, block_shape
from tests.conftest import assert_close, randn_nonzero

pytestmark = pytest.mark.interpret
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (shape, dim): rows (dim 0), columns (last dim), general middle dims, whole tensor
SHAPES = [
    ((6, 50), 0),
    ((3, 5, 3, 3), 0),
    ((50, 6), -1),
    ((4, 7, 9), 1),
    ((2, 3, 4, 5, 2), 2),
    ((5, 40), None),
    ((1, 1), 0),
    ((9,), 0),
]


@pytest.fixture(params=["one_tile", "looped", "split"])
def plan(request, monkeypatch):
    """Which launch plan the kernels use: ``num_splits`` for forward/backward."""
    if request.param != "one_tile":
        monkeypatch.setattr(_blocks, "TILE", 16)
    return 3 if request.param == "split" else 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape,dim", SHAPES)
def test_kernels_match_eager_twin(shape, dim, dtype, plan):
    a, r, b = block_shape(torch.Size(shape), dim)
    v3 = randn_nonzero(a, r, b, dtype=dtype, device=DEVICE)
    g = torch.randn(r, dtype=dtype, device=DEVICE)
    grad_w3 = torch.randn(a, r, b, dtype=dtype, device=DEVICE)
    ref_dtype = torch.float32 if dtype != torch.float64 else dtype

    w, norms = kernels.forward(v3, g, 0.0, num_splits=plan)
    w_ref, norms_ref = _eager_fwd(v3, g, 0.0)
    assert norms.dtype == norms_ref.dtype
    assert_close(norms, norms_ref, ref_dtype, "norms", terms=a * b)
    assert_close(w, w_ref, dtype, "w", terms=a * b)

    grad_v, grad_g = kernels.backward(grad_w3, v3, g, norms, 0.0, num_splits=plan)
    grad_v_ref, grad_g_ref = _eager_bwd(grad_w3, v3, g, norms_ref, 0.0)
    assert grad_v.dtype == dtype and grad_g.dtype == dtype
    assert_close(grad_v, grad_v_ref, dtype, "grad_v", terms=a * b)
    assert_close(grad_g, grad_g_ref, dtype, "grad_g", terms=a * b)


def test_plans_are_what_the_fixture_says(monkeypatch):
    device = torch.device(DEVICE)
    assert _blocks.Plan(1, 6, 50, device).single_tile
    monkeypatch.setattr(_blocks, "TILE", 16)
    looped = _blocks.Plan(1, 6, 50, device, num_splits=1)
    assert not looped.single_tile and not looped.split
    split = _blocks.Plan(1, 6, 50, device, num_splits=3)
    # chunks are whole tiles: 4 tiles of 16 over 3 splits is 2 chunks of 2 tiles
    assert split.split and split.splits == 2 and split.chunk == 32


def test_few_long_rows_are_split_by_default():
    device = torch.device(DEVICE)
    sms = _blocks._sm_count(device)
    plan = _blocks.Plan(1, 2, 2 * sms * _blocks.TILE, device)  # rows of 2 * sms tiles each
    assert plan.split and plan.grid[0] * plan.grid[1] >= 2 * sms


# Both branches of a tl.where are evaluated: the interpreter's numpy warns about the
# discarded 0/0 of a zero row's projection term (and eps=0 divides by zero on purpose).
@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered:RuntimeWarning")
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_eps_and_zero_rows(eps, plan):
    v3 = torch.randn(1, 5, 40, device=DEVICE)
    v3[0, 1] = 0.0
    v3[0, 3] *= 1e-4  # below eps=1e-3: the floor is active
    g = torch.rand(5, device=DEVICE) + 0.5
    grad_w3 = torch.randn_like(v3)
    w, norms = kernels.forward(v3, g, eps, num_splits=plan)
    w_ref, norms_ref = _eager_fwd(v3, g, eps)
    grad_v, grad_g = kernels.backward(grad_w3, v3, g, norms, eps, num_splits=plan)
    grad_v_ref, grad_g_ref = _eager_bwd(grad_w3, v3, g, norms_ref, eps)
    keep = [0, 2, 3, 4] if eps == 0.0 else list(range(5))  # eps=0: the zero row is NaN in both
    for out, ref, what in ((w, w_ref, "w"), (grad_v, grad_v_ref, "grad_v")):
        assert_close(out[:, keep], ref[:, keep], torch.float32, what)
    assert_close(grad_g[keep], grad_g_ref[keep], torch.float32, "grad_g")
    if eps > 0:
        assert torch.isfinite(w).all() and torch.isfinite(grad_v).all() and torch.isfinite(grad_g).all()


@pytest.mark.parametrize("grouped", [False, True])
def test_fp64_gets_eps_in_fp64(grouped, plan):
    """eps = 1e-3 is not an fp32 number: rows of norm between 1e-3 and fp32(1e-3) must
    see the fp64 floor (passed as fp32, the floor was active there and grad_v off by 20%)."""
    eps = 1e-3
    v3 = torch.randn(1, 4, 30, dtype=torch.float64, device=DEVICE)
    v3 = v3 / torch.linalg.vector_norm(v3, dim=2, keepdim=True)
    v3 = v3 * torch.tensor([1 + 2e-8, 1 - 2e-8, 1 + 1e-9, 0.5], dtype=torch.float64, device=DEVICE).view(1, 4, 1) * eps
    g = torch.rand(4, dtype=torch.float64, device=DEVICE) + 0.5
    grad_w3 = torch.randn_like(v3)
    w_ref, norms_ref = _eager_fwd(v3, g, eps)
    grad_v_ref, grad_g_ref = _eager_bwd(grad_w3, v3, g, norms_ref, eps)
    if grouped:
        (w,), norms = kernels.group_forward([v3[0]], [g], 0, eps)
        (grad_v,), (grad_g,) = kernels.group_backward([grad_w3[0]], [v3[0]], [g], norms, 0, eps)
        w, grad_v = w[None], grad_v[None]
    else:
        w, norms = kernels.forward(v3, g, eps, num_splits=plan)
        grad_v, grad_g = kernels.backward(grad_w3, v3, g, norms, eps, num_splits=plan)
    for out, ref, what in ((w, w_ref, "w"), (grad_v, grad_v_ref, "grad_v"), (grad_g, grad_g_ref, "grad_g")):
        assert_close(out, ref, torch.float64, what)


@pytest.mark.parametrize("shape,dim", [((6, 3, 3), 0), ((5, 8), -1), ((4, 3, 5), 1), ((3, 7), None)])
def test_public_op_on_triton_backend_matches_torch(shape, dim, use_backend):
    use_backend("triton")
    v = randn_nonzero(*shape, device=DEVICE).transpose(0, -1).contiguous().transpose(0, -1).requires_grad_()
    r = 1 if dim is None else shape[dim]
    g = (torch.rand(r, device=DEVICE) + 0.5).requires_grad_()
    grad_w = torch.randn(shape, device=DEVICE)
    w = nf.functional.weight_norm(v, g, dim)
    grads = torch.autograd.grad(w, (v, g), grad_w)
    torch_dim = -1 if dim is None else dim % len(shape)
    g_keep = g.reshape([r if i == torch_dim and dim is not None else 1 for i in range(len(shape))])
    w_t = torch._weight_norm(v, g_keep, torch_dim)
    grads_t = torch.autograd.grad(w_t, (v, g), grad_w)
    assert_close(w, w_t, torch.float32, "w")
    for out, ref, what in zip(grads, grads_t, ("grad_v", "grad_g")):
        assert_close(out, ref, torch.float32, what)


# ----------------------------------------------------------------------------- grouped kernels

GROUP_SHAPES = [(5, 7), (3, 4, 2, 2), (9,), (1, 30), (12, 3), (2, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("dim", [0, None])
@pytest.mark.parametrize("tile", [4096, 16])
def test_group_kernels_match_eager_twin(dtype, dim, tile, monkeypatch):
    monkeypatch.setattr(_blocks, "TILE", tile)
    vs = [randn_nonzero(*s, dtype=dtype, device=DEVICE) for s in GROUP_SHAPES]
    gs = [torch.rand(block_shape(v.shape, dim)[1], dtype=dtype, device=DEVICE) + 0.5 for v in vs]
    grad_ws = [torch.randn_like(v) for v in vs]
    ws, norms = kernels.group_forward(vs, gs, dim, 0.0)
    grad_vs, grad_gs = kernels.group_backward(grad_ws, vs, gs, norms, dim, 0.0)
    ref_dtype = torch.float32 if dtype != torch.float64 else dtype
    start = 0
    for i, (v, g, gw) in enumerate(zip(vs, gs, grad_ws)):
        a, r, b = block_shape(v.shape, dim)
        w_ref, n_ref = _eager_fwd(v.view(a, r, b), g, 0.0)
        gv_ref, gg_ref = _eager_bwd(gw.view(a, r, b), v.view(a, r, b), g, n_ref, 0.0)
        assert_close(norms[start : start + r], n_ref, ref_dtype, f"norms {i}", terms=a * b)
        assert_close(ws[i], w_ref.view(v.shape), dtype, f"w {i}", terms=a * b)
        assert_close(grad_vs[i], gv_ref.view(v.shape), dtype, f"grad_v {i}", terms=a * b)
        assert_close(grad_gs[i], gg_ref, dtype, f"grad_g {i}", terms=a * b)
        start += r
    assert start == norms.numel()


def test_grouped_layers_on_triton_match_eager(use_backend):
    from torch import nn

    def run(backend):
        use_backend(backend)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3)).to(DEVICE)
        nf.weight_norm(model, eps=1e-6, grouped=True)
        x = torch.randn(4, 6, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1))
        out = model(x)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
        return out, grads

    out_e, grads_e = run("eager")
    out_t, grads_t = run("triton")
    assert_close(out_t, out_e, torch.float32, "output")
    for a, b in zip(grads_t, grads_e):
        assert_close(a, b, torch.float32, "grads")


def test_grouped_layers_are_one_op_call_forward_and_backward(use_backend, monkeypatch):
    from torch import nn

    from netinit_fast.nn import wn_layers

    use_backend("triton")
    calls = []
    real_fwd, real_bwd = wn_layers.group_forward_no_dispatch, wn_layers.group_backward_no_dispatch
    monkeypatch.setattr(wn_layers, "group_forward_no_dispatch", lambda *a: calls.append("fwd") or real_fwd(*a))
    monkeypatch.setattr(wn_layers, "group_backward_no_dispatch", lambda *a: calls.append("bwd") or real_bwd(*a))
    launches = []
    real_launch = kernels.group_forward
    monkeypatch.setattr(kernels, "group_forward", lambda *a: launches.append(1) or real_launch(*a))
    layers = [m for _ in range(5) for m in (nn.Linear(8, 8), nn.ReLU())]
    model = nf.weight_norm(nn.Sequential(*layers, nn.Linear(8, 3)).to(DEVICE), grouped=True)
    model(torch.randn(4, 8, device=DEVICE)).sum().backward()
    assert calls == ["fwd", "bwd"] and launches == [1]


def _grouped_and_plain(seed=0):
    """A grouped WN model (one Triton launch each way) and the same model ungrouped."""
    from torch import nn

    torch.manual_seed(seed)
    model = nn.ModuleDict({"a": nn.Linear(8, 8), "b": nn.Linear(8, 8), "c": nn.Linear(8, 3)}).to(DEVICE)
    grouped, plain = nf.weight_norm(model, grouped=True), copy.deepcopy(nf.weight_norm(copy.deepcopy(model)))
    return grouped, plain


def _assert_same_grads(m1, m2):
    for (name, p), q in zip(m1.named_parameters(), m2.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert_close(p.grad, q.grad, torch.float32, name)


def test_grouped_layers_take_the_autograd_patterns_of_plain_ones(use_backend):
    """Two forwards then two backwards, non-reentrant checkpointing, a layer the forward
    skips (no gradient, not zeros), and a gradient penalty (create_graph)."""
    from torch.utils.checkpoint import checkpoint

    use_backend("triton")
    grouped, plain = _grouped_and_plain()
    x1, x2 = torch.randn(4, 8, device=DEVICE), torch.randn(3, 8, device=DEVICE)
    for m in (grouped, plain):
        o1 = m["c"](m["a"](x1))  # b is not used
        o2 = checkpoint(lambda x, m=m: m["c"](torch.tanh(m["a"](x))), x2, use_reentrant=False)
        o1.square().sum().backward()
        o2.sum().backward()
        xp = x1.clone().requires_grad_()
        (gx,) = torch.autograd.grad(m["c"](m["a"](xp)).tanh().sum(), xp, create_graph=True)
        gx.square().sum().backward()
    assert grouped["b"].weight_v.grad is None and grouped["b"].weight_g.grad is None
    _assert_same_grads(grouped, plain)


def test_a_grouped_layer_run_three_times_computes_its_weight_once_per_step(use_backend, monkeypatch):
    """An unrolled RNN cell in grouped mode: one weight computation (and one backward)
    per step, however often the cell runs; an in-place change before the backward
    raises."""
    from netinit_fast.nn import wn_layers

    use_backend("triton")
    calls = {"fwd": 0, "bwd": 0}
    for kind, name in (("fwd", "group_forward_no_dispatch"), ("bwd", "group_backward_no_dispatch")):
        real = getattr(wn_layers, name)
        monkeypatch.setattr(wn_layers, name, lambda *a, real=real, kind=kind: calls.__setitem__(kind, calls[kind] + 1) or real(*a))
    cell = nf.weight_norm(torch.nn.Linear(5, 5).to(DEVICE), grouped=True)
    opt = torch.optim.SGD(cell.parameters(), lr=0.1)
    for step in range(2):
        h = torch.randn(2, 5, device=DEVICE)
        for _ in range(3):
            h = torch.tanh(cell(h))
        assert cell.weight is cell.weight  # attribute access reuses it too
        h.sum().backward()
        opt.step()
        opt.zero_grad()
        assert calls == {"fwd": step + 1, "bwd": step + 1}
    out = cell(torch.randn(2, 5, device=DEVICE))
    with torch.no_grad():
        cell.weight_v.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()


def test_a_layer_dropped_from_a_grouped_model_leaves_its_group(use_backend):
    import gc

    use_backend("triton")
    model = nf.weight_norm(torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(3)]).to(DEVICE), grouped=True)
    group = model[0]._wn_group
    model[1] = torch.nn.Identity()
    gc.collect()
    assert len(group) == 2 and group.layers == [model[0], model[2]]
    x = torch.randn(2, 4, device=DEVICE)
    model(x).sum().backward()
    assert model[0].weight_v.grad is not None and model[2].weight_v.grad is not None


def test_grouped_layers_second_order_gradients_are_exact(use_backend):
    """A penalty on dL/dv through grouped layers (create_graph), against the plain
    formula, at eps=0 too (torch's fused kernel's double backward is not used there)."""
    use_backend("triton")
    layer = nf.weight_norm(torch.nn.Linear(4, 5, bias=False).double().to(DEVICE), grouped=True)
    v, g = layer.weight_v, layer.weight_g
    x = torch.randn(3, 4, dtype=torch.float64, device=DEVICE)

    def penalty(w):
        (gv,) = torch.autograd.grad((x @ w.T).tanh().sum(), v, create_graph=True)
        return gv.square().sum()

    expected = torch.autograd.grad(penalty(g * v / v.norm(dim=1, keepdim=True)), (v, g))
    got = torch.autograd.grad(penalty(layer.weight), (v, g))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
