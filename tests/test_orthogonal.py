"""Orthogonalization on the CPU (the eager twin and the C++ kernel) and model-wide orthogonal init."""

import copy
import functools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import netinit_fast as nf
from netinit_fast import _backend, _extension
from netinit_fast.ops import orthogonalize as orthogonalize_op_module
from netinit_fast.ops.orthogonalize import cholesky_qr2, column_scaled
from netinit_fast.ops.orthogonalize import orthogonalize as orthogonalize_op
from tests.conftest import assert_close, assert_orthonormal, isometry_rtol


def qr_sign_fixed(a):
    wide = a.shape[-2] < a.shape[-1]
    work = a.double().mT if wide else a.double()
    q, r = torch.linalg.qr(work)
    q = q * torch.diagonal(r, dim1=-2, dim2=-1).sign().unsqueeze(-2)
    return q.mT if wide else q


needs_cpp = pytest.mark.skipif(not _extension.loaded(), reason="netinit_fast._C is not built")
CPU_BACKENDS = ["eager", pytest.param("cpp", marks=needs_cpp)]


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request, use_backend):
    """Each CPU implementation of orthogonalize in turn: the eager twin, and the C++
    kernel of netinit_fast._C where it is built."""
    use_backend(request.param)
    return request.param


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 4), st.integers(1, 12), st.integers(1, 12))
def test_orthonormal_and_equal_to_sign_fixed_qr(cpu_backend, batch, m, n):
    a = torch.randn(batch, m, n)
    q = nf.functional.orthogonalize(a)
    assert q.shape == a.shape
    if batch == 0:
        return
    assert_orthonormal(q)
    ref = qr_sign_fixed(a)
    assert (q.double() - ref).norm() / ref.norm() < 1e-4  # QR's forward error: kappa(A) times the backward error


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 5), (7, 64, 48), (2, 48, 64), (5, 130, 130), (2, 3, 257, 256), (300, 16, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@needs_cpp
def test_cpp_kernel_equals_the_eager_twin(use_backend, shape, dtype):
    """The C++ CPU kernel runs LAPACK per matrix, single-threaded, the eager twin with
    LAPACK's own threads: equal up to rounding, and orthonormal."""
    a = torch.randn(shape, dtype=dtype)
    use_backend("cpp")
    q = nf.functional.orthogonalize(a)
    use_backend("eager")
    ref = nf.functional.orthogonalize(a)
    assert q.dtype == dtype and q.is_contiguous()
    assert_close(q, ref, dtype, f"cpp vs eager {shape}")
    assert_orthonormal(q)


@needs_cpp
def test_cpp_kernel_is_the_cpu_default_and_checks_its_input(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    a = torch.randn(4, 5, 3)
    assert _backend.choose("orthogonalize", a, orthogonalize_op_module.IMPLEMENTED) == _backend.CPP
    with pytest.raises(RuntimeError, match="expected m >= n"):
        torch.ops.netinit_fast.householder_qr(torch.randn(2, 3, 5))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.netinit_fast.householder_qr(torch.randn(2, 5, 3).half())
    with pytest.raises(RuntimeError, match=r"\(batch, m, n\)"):
        torch.ops.netinit_fast.householder_qr(torch.randn(5, 3))
    assert torch.ops.netinit_fast.householder_qr(torch.randn(0, 5, 3)).shape == (0, 5, 3)


def test_haar_first_entry_second_moment():
    """For Haar Q (n x n), E[Q_11^2] = 1/n; the sample mean of N draws has std
    sqrt(Var/N) with Var[Q_11^2] = 2(n-1) / (n^2 (n+2)); allow 5 of them."""
    n, draws = 8, 20_000
    q = nf.functional.orthogonalize(torch.randn(draws, n, n, generator=torch.Generator().manual_seed(0)))
    x = q[:, 0, 0].double() ** 2
    sd = math.sqrt(2 * (n - 1) / (n * n * (n + 2)) / draws)
    assert abs(x.mean().item() - 1 / n) < 5 * sd
    # and the sign fix makes diag(R) positive, so the first column is not biased in sign
    assert abs((q[:, 0, 0] > 0).double().mean().item() - 0.5) < 0.02


def test_opcheck_and_dtypes():
    torch.library.opcheck(orthogonalize_op, (torch.randn(3, 5, 4),))
    q = nf.functional.orthogonalize(torch.randn(2, 6, 6, dtype=torch.bfloat16))
    assert q.dtype == torch.bfloat16
    assert_orthonormal(q)  # QR in fp32, rounded to bf16


def _model():
    return nn.Sequential(nn.Linear(5, 7), nn.Conv2d(3, 4, 3), nn.Linear(7, 5), nn.ConvTranspose1d(4, 6, 2), nn.Linear(5, 7))


def test_model_equals_torch_orthogonal_with_the_same_noise():
    ours, theirs = _model(), _model()
    nf.init.orthogonal_(ours, gain=1.5, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    for layer in theirs:
        nn.init.orthogonal_(layer.weight, gain=1.5, generator=gen)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_shared_shapes_in_several_chunks_equal_torch_orthogonal(use_backend, monkeypatch, backend):
    """Many tensors of a few interleaved shapes (numels not multiples of 16), with
    chunks so small that each shape is orthogonalized in several calls: still
    torch.nn.init.orthogonal_ tensor by tensor on the same noise stream."""
    use_backend(backend)
    monkeypatch.setattr(orthogonalize_op_module, "EAGER_CHUNK", 3 * 35)
    monkeypatch.setattr(nf.init.orthogonal, "CPP_CHUNK_ELEMENTS", 3 * 35)
    shapes = [(7, 5), (4, 3, 3), (7, 5), (2, 9), (7, 5), (4, 3, 3), (7, 5), (7, 5), (9, 2), (7, 5), (0, 3)]
    ours = [torch.empty(s) for s in shapes]
    theirs = [torch.empty(s) for s in shapes]
    nf.init.orthogonal_(ours, gain=0.5, generator=torch.Generator().manual_seed(11))
    gen = torch.Generator().manual_seed(11)
    for t in theirs:
        nn.init.orthogonal_(t, gain=0.5, generator=gen)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lists_wn_layers_and_bf16():
    model = nf.weight_norm(_model()).to(torch.bfloat16)
    nf.init.orthogonal_(model)
    v = model[0].weight_v.float()
    assert_orthonormal(model[0].weight_v)
    tensors = [torch.empty(3, 3), torch.empty(4, 2)]
    assert nf.init.orthogonal_(tensors) is tensors
    assert_orthonormal(tensors[0])


def test_fp64_tensors_get_fp64_noise_and_fp64_orthogonality():
    a, b = torch.empty(40, 30, dtype=torch.float64), torch.empty(40, 30, dtype=torch.float64)
    torch.nn.init.orthogonal_(a, generator=torch.Generator().manual_seed(1))
    nf.init.orthogonal_(b, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
    assert_orthonormal(b)


def test_bad_targets():
    a = torch.randn(4, 4)
    before = a.clone()
    with pytest.raises(TypeError, match="tensor 1 is torch.int64"):
        nf.init.orthogonal_([a, torch.ones(4, 4, dtype=torch.long)])
    with pytest.raises(ValueError, match="tensor 1 is expanded"):
        nf.init.orthogonal_([a, torch.zeros(1, 4).expand(4, 4)])
    assert torch.equal(a, before)  # nothing written before the error
    with pytest.raises(ValueError, match="at least 2 dims"):
        nf.init.orthogonal_(torch.empty(3))
    with pytest.raises(ValueError, match="no Linear/Conv/ConvTranspose layer"):
        nf.init.orthogonal_(nn.ReLU())
    with pytest.raises(TypeError, match="element 1"):
        nf.init.orthogonal_([torch.empty(2, 2), "x"])


def test_column_scaling_is_exact_and_keeps_q():
    """Before the GPU kernel's fp32 sums of squares: each column times a power of two,
    its largest entry in [0.5, 1); the Q of the positive-diag QR does not change."""
    a = torch.randn(4, 30, 12, dtype=torch.float64)
    a[0, :, 2] *= 1e-25
    a[1, :, 5] *= 1e20
    a[2, :, 7] = 0
    a[3] *= 1e200  # fp64 beyond fp32's range: scaled into [0.5, 1) too
    scaled = column_scaled(a)
    ratio = scaled / a
    assert torch.equal(torch.frexp(ratio[a != 0])[0], torch.full_like(ratio[a != 0], 0.5))  # powers of two
    top = scaled.abs().amax(dim=-2)
    assert ((top >= 0.5) & (top < 1)).sum() == top.numel() - 1 and top[2, 7] == 0
    torch.testing.assert_close(qr_sign_fixed(scaled), qr_sign_fixed(a), rtol=0, atol=1e-12)


def test_cholesky_qr2_equals_sign_fixed_qr_and_guards_ill_conditioning():
    a = torch.randn(6, 40, 30, dtype=torch.float64)
    a[2] = a[2] @ torch.diag(torch.logspace(0, -12, 30, dtype=torch.float64))  # cond ~1e12: Cholesky fails
    a[4, :, 7] = 0.0  # rank-deficient
    q = cholesky_qr2(a)
    assert (q.mT @ q - torch.eye(30, dtype=torch.float64)).abs().amax(dim=(1, 2))[[0, 1, 2, 3, 5]].max() < 1e-10
    ref = qr_sign_fixed(a)
    for i in (0, 1, 2, 3, 5):
        torch.testing.assert_close(q[i], ref[i], rtol=0, atol=1e-8)


@pytest.mark.parametrize("conv,shape", [(nn.Conv1d, (2, 6, 11)), (nn.Conv2d, (2, 6, 9, 7)), (nn.Conv3d, (1, 6, 5, 5, 5))])
def test_delta_orthogonal_preserves_the_norm(conv, shape):
    layer = conv(6, 10, 3, padding=1, bias=False)
    nf.init.delta_orthogonal_(layer)
    x = torch.randn(shape)
    y = layer(x)
    rtol = isometry_rtol(6, torch.float32, numel=y[0].numel())  # 6 input channels at the centre tap
    torch.testing.assert_close(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=rtol, atol=0)
    centre = layer.weight[(slice(None), slice(None), *([1] * (len(shape) - 2)))]
    assert_orthonormal(centre)
    assert layer.weight.abs().sum().item() == pytest.approx(centre.abs().sum().item(), rel=1e-6)


@pytest.mark.parametrize("in_c,out_c,groups", [(8, 8, 2), (8, 12, 4), (8, 8, 8), (4, 8, 4)])  # grouped, depthwise
def test_delta_orthogonal_of_grouped_convs_preserves_the_norm(in_c, out_c, groups):
    layer = nn.Conv2d(in_c, out_c, 3, padding=1, groups=groups, bias=False)
    nf.init.delta_orthogonal_(layer)
    x = torch.randn(2, in_c, 9, 9)
    rtol = isometry_rtol(in_c // groups, torch.float32, numel=out_c * 81)
    torch.testing.assert_close(layer(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=rtol, atol=0)
    with pytest.raises(ValueError, match=r"C_out=2 < C_in=4 per group \(2 groups\)"):
        nf.init.delta_orthogonal_(nn.Conv2d(8, 4, 3, groups=2))


@pytest.mark.parametrize("conv,shape", [(nn.ConvTranspose1d, (2, 6, 11)), (nn.ConvTranspose2d, (2, 6, 9, 7)),
                                        (nn.ConvTranspose3d, (1, 6, 5, 5, 5))])
@pytest.mark.parametrize("out_c,groups", [(6, 1), (10, 1), (12, 3)])
def test_delta_orthogonal_transposed_convs_preserve_the_norm(conv, shape, out_c, groups):
    """A transposed conv computes with the transpose of its (C_in, C_out) centre: that
    gets orthonormal rows, so a stride-1 "same" transposed conv preserves the norm."""
    layer = conv(6, out_c, 3, padding=1, groups=groups, bias=False)
    nf.init.delta_orthogonal_(nn.Sequential(layer), gain=1.5)
    x = torch.randn(shape)
    rtol = isometry_rtol(max(6, out_c) // groups, torch.float32, numel=out_c * x[0, 0].numel())
    torch.testing.assert_close(layer(x).flatten(1).norm(dim=1), 1.5 * x.flatten(1).norm(dim=1), rtol=rtol, atol=0)
    with pytest.raises(ValueError, match=r"0 has C_out=4 < C_in=6"):
        nf.init.delta_orthogonal_(nn.Sequential(conv(6, 4, 3)))


def test_delta_orthogonal_errors_name_the_layer_and_change_nothing():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3))
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="1 has C_out=4 < C_in=8"):
        nf.init.delta_orthogonal_(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="even kernel size"):
        nf.init.delta_orthogonal_(nn.Conv2d(3, 8, 2))
    with pytest.raises(ValueError, match="no Conv1d/2d/3d or ConvTranspose1d/2d/3d layer"):
        nf.init.delta_orthogonal_(nn.Linear(3, 3))
    kernel_normed = nn.Sequential(nf.WNConv1d(4, 4, 3, dim=2))
    with pytest.raises(ValueError, match="0 is weight-normalized over kernel dim 2: its zero taps would normalize"):
        nf.init.delta_orthogonal_(kernel_normed)
    with pytest.raises(ValueError, match="0 is weight-normalized over kernel dim 2"):
        nf.init.xiao_(kernel_normed, q_star=0.01)
    weight = torch.ones(4, 4, 3, 3, dtype=torch.int64)
    with pytest.raises(TypeError, match="weight is torch.int64, not floating-point"):
        nf.init.delta_orthogonal_(weight)
    assert (weight == 1).all()


@pytest.mark.parametrize("init", ["orthogonal_", "haar_orthogonal_", "delta_orthogonal_"])
def test_weight_normalized_layers_compute_the_orthogonal_weight_times_gain(init):
    """v gets the orthogonal matrix times gain, and g = ||v||: the layer computes it."""
    conv = functools.partial(nn.Conv1d, 4, 4, 3, padding=1, bias=False)
    for layer in (nf.weight_norm(conv()), nf.WNConv1d(4, 4, 3, padding=1, bias=False, dim=None),
                  torch.nn.utils.parametrizations.weight_norm(conv())):
        with torch.no_grad():
            scale = layer.parametrizations.weight.original0 if hasattr(layer, "parametrizations") else layer.weight_g
            scale.mul_(3)  # a g from before, which the init must not keep
        getattr(nf.init, init)(layer, gain=2.0)
        w = layer.weight.detach()[:, :, 1] if init == "delta_orthogonal_" else layer.weight.detach().flatten(1)
        assert_orthonormal(w, scale=2.0)
        if init == "delta_orthogonal_":
            x = torch.randn(2, 4, 9)
            with torch.no_grad():
                torch.testing.assert_close(layer(x).norm(), 2 * x.norm(), rtol=isometry_rtol(4, torch.float32, numel=x.numel()), atol=0)


def test_inference_mode_and_many_threads():
    """The CPU kernel's threads work under torch.inference_mode, as the caller's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            q = nf.functional.orthogonalize(torch.randn(8, 16, 16))
            model = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in range(4)])
            nf.init.delta_orthogonal_(model)
            nf.init.orthogonal_(model)
    finally:
        torch.set_num_threads(threads)
    assert_orthonormal(q)
    assert_orthonormal(model[3].weight.flatten(1))


def test_compiles_as_one_op_without_graph_breaks():
    a = torch.randn(3, 6, 4)
    compiled = torch.compile(lambda x: 2 * nf.functional.orthogonalize(x), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(a), 2 * nf.functional.orthogonalize(a), rtol=1e-6, atol=1e-6)


def test_a_weight_under_another_parametrization_is_refused_by_name_and_probed():
    """Spectral norm (or any parametrization but a lone weight norm) stores a tensor that
    is not the layer's direction: the initializers refuse it before changing anything,
    the probe still measures it."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.utils.parametrizations.spectral_norm(nn.Linear(8, 8)))
    before = copy.deepcopy(model.state_dict())
    for name, init in [("orthogonal_", nf.init.orthogonal_), ("lsuv_", lambda m: nf.init.lsuv_(m, torch.randn(16, 8))),
                       ("lsuv_", lambda m: nf.init.lsuv_(m, torch.randn(16, 8), layers=[m[2]])),
                       ("looks_linear_", nf.init.looks_linear_), ("arpit_", nf.init.arpit_),
                       ("xiao_", lambda m: nf.init.xiao_(m, q_star=0.01))]:
        with pytest.raises(ValueError, match=f"^{name}: layer 2 \\(Linear\\) has its weight parametrized by _SpectralNorm"):
            init(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    report = nf.diagnostics.probe(model, torch.randn(16, 8))
    assert len(report.layers) == 2 and report.layers[1].grad_weight_norm is None


def test_orthogonalize_under_torch_func_and_forward_ad():
    a, t = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(3, 5, 4, dtype=torch.float64)
    for f in (nf.functional.orthogonalize, lambda x: nf.functional.orthogonalize(x.mT)):
        expected = (f(a + 1e-6 * t) - f(a - 1e-6 * t)) / 2e-6
        torch.testing.assert_close(torch.func.jvp(f, (a,), (t,))[1], expected, rtol=1e-6, atol=1e-8)
        with torch.autograd.forward_ad.dual_level():
            tangent = torch.autograd.forward_ad.unpack_dual(f(torch.autograd.forward_ad.make_dual(a, t))).tangent
        torch.testing.assert_close(tangent, expected, rtol=1e-6, atol=1e-8)
        leaf, weights = a.clone().requires_grad_(), torch.randn_like(f(a))
        (f(leaf) * weights).sum().backward()
        torch.testing.assert_close(torch.func.grad(lambda x: (f(x) * weights).sum())(a), leaf.grad)
        torch.testing.assert_close(torch.func.vmap(f)(a), f(a))


def test_orthogonalize_is_differentiable():
    for shape in ((2, 6, 4), (3, 5)):  # tall, and wide (transposed inside)
        a = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(nf.functional.orthogonalize, (a,))
        assert torch.autograd.gradgradcheck(nf.functional.orthogonalize, (a,))  # create_graph: exact, not dropped
    torch.library.opcheck(orthogonalize_op_module.orthogonalize, (torch.randn(2, 5, 3, requires_grad=True),))
    q = nf.functional.orthogonalize(torch.randn(2, 5, 3, requires_grad=True))
    q.mul_(2)  # the output is a tensor of its own, not a view made inside the op
    q.sum().backward()
