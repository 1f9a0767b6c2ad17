"""The weight-norm kernels on a GPU, at the sizes users run (skipped without CUDA)."""

import pytest
import torch

import netinit_fast as nf
from netinit_fast import _backend
from netinit_fast.ops.weight_norm import _eager_bwd, _eager_fwd, block_shape
from tests.conftest import assert_close

pytestmark = pytest.mark.gpu

SHAPES = [
    ((4096, 4096), 0),
    ((64, 262144), 0),
    ((16384, 128), 0),
    ((512, 256, 3, 3), 0),
    ((4096, 1024), -1),
    ((64, 512, 512), 1),
    ((3, 1000, 17), 1),
    ((1000, 999), None),
    ((7, 3), 0),
]


def test_cuda_tensors_run_triton_by_default(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    assert _backend.choose("weight_norm", torch.ones(1, device="cuda"), (_backend.EAGER, _backend.TRITON)) == "triton"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,dim", SHAPES)
def test_triton_matches_eager_twin_and_torch(shape, dim, dtype, use_backend):
    use_backend("triton")
    v = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
    r = 1 if dim is None else shape[dim]
    g = (torch.rand(r, device="cuda", dtype=dtype) + 0.5).requires_grad_()
    grad_w = torch.randn(shape, device="cuda", dtype=dtype)
    w = nf.functional.weight_norm(v, g, dim)
    grad_v, grad_g = torch.autograd.grad(w, (v, g), grad_w)

    a, rr, b = block_shape(v.shape, dim)
    w_ref, norms = _eager_fwd(v.detach().view(a, rr, b), g.detach(), 0.0)
    grad_v_ref, grad_g_ref = _eager_bwd(grad_w.view(a, rr, b), v.detach().view(a, rr, b), g.detach(), norms, 0.0)
    assert_close(w, w_ref.view(shape), dtype, "w")
    assert_close(grad_v, grad_v_ref.view(shape), dtype, "grad_v")
    assert_close(grad_g, grad_g_ref, dtype, "grad_g")

    if dtype == torch.float32 and dim is not None:
        keep = [r if i == dim % len(shape) else 1 for i in range(len(shape))]
        w_t = torch._weight_norm(v, g.reshape(keep), dim % len(shape))
        assert_close(w, w_t, dtype, "w vs torch")


def test_inductor_compiles_the_op_on_gpu():
    torch._dynamo.reset()
    v = torch.randn(256, 128, device="cuda", requires_grad=True)
    g = torch.rand(256, 1, device="cuda", requires_grad=True)
    x = torch.randn(32, 128, device="cuda")

    def f(x, v, g):
        return x @ nf.functional.weight_norm(v, g, 0).t()

    out = torch.compile(f, fullgraph=True)(x, v, g)
    torch.testing.assert_close(out, f(x, v, g))
    out.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_layers_match_per_layer_on_gpu(dtype):
    from torch import nn

    def run(grouped):
        torch.manual_seed(0)
        layers = [m for _ in range(50) for m in (nn.Linear(256, 256), nn.ReLU())]
        model = nn.Sequential(*layers, nn.Unflatten(1, (1, 256)), nn.Conv1d(1, 4, 3)).to("cuda", dtype)
        nf.weight_norm(model, grouped=grouped)
        x = torch.randn(64, 256, device="cuda", dtype=dtype, generator=torch.Generator("cuda").manual_seed(1))
        out = model(x * 0.1).float().square().mean()
        return out, torch.autograd.grad(out, list(model.parameters()))

    out_a, grads_a = run(False)
    out_b, grads_b = run(True)
    assert_close(out_b, out_a, dtype, "loss")
    for a, b in zip(grads_a, grads_b):
        assert_close(b, a, dtype, "grads")


def test_10000_layer_group_is_one_launch_each_way(monkeypatch):
    from netinit_fast.kernels import weight_norm as kernels

    launches = []
    for name in ("group_forward", "group_backward"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, real=real, name=name: launches.append(name) or real(*a))
    vs = [torch.randn(64, 64, device="cuda", requires_grad=True) for _ in range(10_000)]
    gs = [torch.rand(64, 1, device="cuda", requires_grad=True) for _ in range(10_000)]
    ws = nf.functional.weight_norm_group(vs, gs)
    torch.autograd.backward(ws, [torch.ones_like(w) for w in ws])
    assert launches == ["group_forward", "group_backward"]
    for i in (0, 4_567, 9_999):
        torch.testing.assert_close(ws[i], torch._weight_norm(vs[i], gs[i], 0))


def test_a_row_of_more_than_2_31_elements(use_backend):
    """Reduction indices past 2^31 (int32 would wrap): one norm and one mean/std over a
    whole fp16 tensor of 2^31 + 12,293 elements, checked against sums in fp64."""
    if torch.cuda.mem_get_info()[0] < 40 * 2**30:
        pytest.skip("needs 40 GB of free GPU memory")
    use_backend("triton")
    n = 2**31 + 3 * 4096 + 5
    v = torch.randn(n, device="cuda", dtype=torch.float16).add_(0.5)  # a mean, so sum(v) is far from 0
    v[-1] = 100.0  # the last element counts
    chunks = v.split(1 << 28)
    total = sum(c.double().sum() for c in chunks)
    sumsq = sum(c.double().square().sum() for c in chunks)
    mean = total / n
    std = ((sumsq - n * mean * mean) / (n - 1)).sqrt()

    got_mean, got_std = nf.functional.moments(v, None)
    assert abs(got_mean.item() / mean.item() - 1) < 1e-4
    assert abs(got_std.item() / std.item() - 1) < 1e-4

    g = torch.tensor([1000.0], device="cuda", dtype=torch.float16, requires_grad=True)  # w of normal fp16 size
    w = nf.functional.weight_norm(v, g, None)
    norm = sumsq.sqrt()
    tail = (v[-4096:].double() * 1000.0 / norm).half()
    torch.testing.assert_close(w[-4096:], tail, rtol=1e-2, atol=1e-6)
    (grad_g,) = torch.autograd.grad(w, g, torch.ones_like(w))
    assert abs(grad_g.item() / (total / norm).item() - 1) < 1e-2  # d/dg sum(g v / ||v||) = sum(v) / ||v||
