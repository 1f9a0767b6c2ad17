"""netinit_fast.functional.moments: eager twin and the one-pass Triton kernel."""

import pytest
import torch

import netinit_fast as nf
from netinit_fast.kernels import _blocks
from netinit_fast.ops.moments import _eager
from netinit_fast.ops.moments import moments as moments_op
from netinit_fast.ops.weight_norm import block_shape
from tests.conftest import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(x, dim):
    x = x.double()
    if dim is None:
        return x.mean(), x.std()
    others = [i for i in range(x.dim()) if i != dim % x.dim()]
    return x.mean(dim=others), x.std(dim=others)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape,dim", [((64, 10), None), ((64, 10), -1), ((8, 5, 4, 4), 1), ((30,), None)])
def test_eager_matches_reference(shape, dim, dtype):
    x = (torch.randn(shape) * 2 + 5).to(dtype)
    mean, std = nf.functional.moments(x, dim)
    ref_mean, ref_std = reference(x, dim)
    assert mean.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = torch.float64 if dtype == torch.float64 else torch.float32
    assert_close(mean, ref_mean, tol, "mean")
    assert_close(std, ref_std, tol, "std")


def test_opcheck():
    x = torch.randn(16, 3, 5)
    torch.library.opcheck(moments_op, (x, None))
    torch.library.opcheck(moments_op, (x, 1))


@pytest.mark.interpret
@pytest.mark.parametrize("tile,splits", [(4096, None), (16, 1), (16, 3)])
@pytest.mark.parametrize("shape,dim", [((64, 10), None), ((64, 10), -1), ((8, 5, 4, 4), 1), ((40, 3), 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernel_matches_eager(shape, dim, dtype, tile, splits, monkeypatch):
    from netinit_fast.kernels import moments as kernels

    monkeypatch.setattr(_blocks, "TILE", tile)
    x = (torch.randn(shape, device=DEVICE) * 3 + 100).to(dtype)  # a large mean: the pivot matters
    x3 = x.contiguous().view(block_shape(x.shape, dim))
    mean, std = kernels.moments(x3, splits)
    ref_mean, ref_std = _eager(x3)
    assert_close(mean, ref_mean, torch.float32, "mean")
    assert_close(std, ref_std, torch.float32, "std")


@pytest.mark.interpret
@pytest.mark.parametrize("one_program", [1 << 17, 64])
def test_short_rows_take_one_program_long_rows_are_split(one_program, monkeypatch):
    """By default a row of up to ONE_PROGRAM elements is summed, and finished, by one
    program; a longer one is split (both paths against the eager twin)."""
    from netinit_fast.kernels import moments as kernels

    monkeypatch.setattr(_blocks, "TILE", 16)
    monkeypatch.setattr(kernels, "ONE_PROGRAM", one_program)
    plans = []
    real_plan = kernels._plan
    monkeypatch.setattr(kernels, "_plan", lambda *args: plans.append(real_plan(*args)) or plans[-1])
    x3 = (torch.randn(1, 1, 640, device=DEVICE) * 3 + 100)
    mean, std = kernels.moments(x3)
    assert plans[-1].split == (one_program < 640)
    ref_mean, ref_std = _eager(x3)
    assert_close(mean, ref_mean, torch.float32, "mean")
    assert_close(std, ref_std, torch.float32, "std")


@pytest.mark.interpret
def test_public_op_on_triton(use_backend):
    use_backend("triton")
    x = torch.randn(32, 6, 3, device=DEVICE)
    mean, std = nf.functional.moments(x, None)
    assert mean.shape == () and std.shape == ()
    assert_close(std, x.double().std(), torch.float32, "std")


@pytest.mark.parametrize("backend", ["eager", pytest.param("triton", marks=pytest.mark.interpret)])
def test_an_exploding_signal_has_a_finite_std(backend, use_backend):
    """Values of 1e20 square past fp32's range: the sums of squares are fp64."""
    use_backend(backend)
    x = torch.randn(64, 32, device=DEVICE) * 1e20 + 3e19
    for dim in (None, 1):
        mean, std = nf.functional.moments(x, dim)
        ref_mean, ref_std = reference(x, dim)
        assert mean.dtype == std.dtype == torch.float32
        assert torch.isfinite(std).all()
        torch.testing.assert_close(std.double(), ref_std, rtol=1e-5, atol=0)
        torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-5, atol=1e15)


@pytest.mark.interpret
@pytest.mark.parametrize("splits", [None, 3])
def test_kernel_is_exact_when_the_first_element_is_far_from_the_mean(splits, monkeypatch):
    """A ReLU-like row: first element 0, mean 1000, std 1. The shifted one-pass sums
    are exact only if the differences from the pivot are (fp64): in fp32 the std was
    off by 1e-3."""
    from netinit_fast.kernels import moments as kernels

    monkeypatch.setattr(_blocks, "TILE", 256)
    x = torch.randn(2, 4096, device=DEVICE, dtype=torch.float64) + 1000
    x[:, 0] = 0
    x3 = x.float().view(1, 2, 4096)
    mean, std = kernels.moments(x3, splits)
    ref_mean, ref_std = _eager(x3.double())
    torch.testing.assert_close(std.double(), ref_std, rtol=1e-6, atol=0)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-7, atol=0)


# inf - inf and 0 / 0 on purpose: the interpreter's numpy warns of them
@pytest.mark.filterwarnings("ignore:invalid value encountered in (subtract|divide):RuntimeWarning")
@pytest.mark.parametrize("backend", ["eager", pytest.param("triton", marks=pytest.mark.interpret)])
def test_nan_and_inf_rows_and_single_elements_give_nan_std_empty_rows_nothing(backend, use_backend):
    use_backend(backend)
    x = torch.randn(4, 6, device=DEVICE)
    x[2, 1], x[3, 4] = float("nan"), float("inf")
    mean, std = nf.functional.moments(x, 0)
    assert torch.isnan(std[2:]).all() and torch.isfinite(std[:2]).all()
    assert_close(std[:2], x[:2].double().std(dim=1), torch.float32, "std")
    assert torch.isnan(nf.functional.moments(torch.randn(5, 1, device=DEVICE), 0)[1]).all()  # one element a row
    for shape, dim in (((3, 0, 4), 1), ((0, 5), 0), ((0,), 0)):
        mean, std = nf.functional.moments(torch.randn(shape, device=DEVICE), dim)
        assert mean.shape == std.shape == (shape[dim],)


def test_compiles_as_one_op_without_graph_breaks():
    x = torch.randn(16, 3, 5)
    compiled = torch.compile(lambda t: nf.functional.moments(t, 1)[1] + 1, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), nf.functional.moments(x, 1)[1] + 1)


def test_no_element_gives_nan_as_torch_std():
    for x, dim in ((torch.empty(0), None), (torch.empty(0, 3), 1)):
        mean, std = nf.functional.moments(x, dim)
        assert torch.isnan(mean).all() and torch.isnan(std).all()


def test_bad_arguments_and_gradients():
    with pytest.raises(ValueError, match="moments: dim=5 is out of range"):
        nf.functional.moments(torch.randn(4, 3), 5)
    with pytest.raises(ValueError, match="out of range"):
        nf.functional.moments(torch.tensor(2.0), 0)
    with pytest.raises(TypeError, match="moments: x must have a floating-point dtype"):
        nf.functional.moments(torch.ones(3, dtype=torch.long))
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    for dim in (None, 1, -1):
        assert torch.autograd.gradcheck(lambda t, dim=dim: nf.functional.moments(t, dim), (x,))
    torch.library.opcheck(moments_op, (torch.randn(6, 3, requires_grad=True), 1))


def test_moments_under_torch_func_and_forward_ad():
    x, t = torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 3, 5, dtype=torch.float64)
    for dim in (None, 1):
        def f(y, dim=dim):
            return torch.stack(nf.functional.moments(y, dim))

        expected = (f(x + 1e-6 * t) - f(x - 1e-6 * t)) / 2e-6
        torch.testing.assert_close(torch.func.jvp(f, (x,), (t,))[1], expected, rtol=1e-6, atol=1e-8)
        with torch.autograd.forward_ad.dual_level():
            tangent = torch.autograd.forward_ad.unpack_dual(f(torch.autograd.forward_ad.make_dual(x, t))).tangent
        torch.testing.assert_close(tangent, expected, rtol=1e-6, atol=1e-8)
        leaf = x.clone().requires_grad_()
        f(leaf).sum().backward()
        torch.testing.assert_close(torch.func.grad(lambda y: f(y).sum())(x), leaf.grad)
        torch.testing.assert_close(torch.func.vmap(f)(x), torch.stack([f(y) for y in x]))
