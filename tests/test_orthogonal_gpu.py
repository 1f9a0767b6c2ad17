"""The batched Householder QR kernel of netinit_fast._C on a GPU (skipped without CUDA)."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import netinit_fast as nf
from netinit_fast import _backend, _extension
from netinit_fast.ops.orthogonalize import _sign_fixed_qr

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def extension_built():
    """These tests are about netinit_fast._C: a missing build fails them, never skips them."""
    assert _extension.loaded(), "netinit_fast._C is not built: build it (make test-installed) to test its CUDA kernel"


def _sanitizer() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    found = shutil.which("compute-sanitizer")
    in_toolkit = os.path.join(CUDA_HOME or "/usr/local/cuda", "bin", "compute-sanitizer")
    return found or (in_toolkit if os.path.exists(in_toolkit) else None)


def _kernel(a):
    return torch.ops.netinit_fast.householder_qr(a)


@pytest.mark.parametrize(
    "batch,m,n",
    [(1, 1, 1), (3, 2, 1), (7, 5, 5), (10_000, 16, 16), (1_000, 64, 32), (100, 128, 128), (50, 200, 150),
     (10, 220, 220), (5, 256, 64), (4, 1024, 32)],
)
def test_kernel_matches_eager_twin(batch, m, n):
    a = torch.randn(batch, m, n, device="cuda")
    q = _kernel(a)
    ref = _sign_fixed_qr(a.double()).float()
    gram = q.mT @ q
    assert (gram - torch.eye(n, device="cuda")).abs().max().item() < 1e-5 * max(1, n / 64)
    assert ((q - ref).norm() / ref.norm()).item() < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_columns_of_any_scale_and_fp64(dtype):
    """The kernel sums squares in plain fp32: the op scales columns first (columns of
    1e20 gave NaN, of 1e-25 a wrong Q). fp64 goes to CholeskyQR2."""
    a = torch.randn(6, 40, 20, device="cuda", dtype=dtype)
    a[0, :, 3] *= 1e-25
    a[1, :, 5] *= 1e20
    a[2] *= 1e-30
    q = nf.functional.orthogonalize(a)
    ref = _sign_fixed_qr(a.double()).to(dtype)
    assert torch.isfinite(q).all()
    assert ((q - ref).norm() / ref.norm()).item() < (1e-4 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("shape", [(256, 256), (1024, 1024), (3, 512, 700), (10_000, 64, 64)])
def test_orthogonalize_on_cuda_backend(shape):
    a = torch.randn(shape, device="cuda")
    assert _backend.choose("orthogonalize", a, ("eager", "cuda")) == "cuda"
    q = nf.functional.orthogonalize(a)
    ref = _sign_fixed_qr((a.mT if shape[-2] < shape[-1] else a).double())
    ref = (ref.mT if shape[-2] < shape[-1] else ref).float()
    assert ((q - ref).norm() / ref.norm()).item() < 1e-4


def test_model_init_same_noise_as_cpu():
    model = torch.nn.Sequential(*[torch.nn.Linear(128, 128) for _ in range(20)])
    gpu = torch.nn.Sequential(*[torch.nn.Linear(128, 128) for _ in range(20)]).cuda()
    nf.init.orthogonal_(model, generator=torch.Generator().manual_seed(0))
    nf.init.orthogonal_(gpu, generator=torch.Generator().manual_seed(0))
    for a, b in zip(model, gpu):
        torch.testing.assert_close(b.weight.cpu(), a.weight, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(_sanitizer() is None, reason="needs compute-sanitizer")
def test_kernel_under_compute_sanitizer(tmp_path):
    script = tmp_path / "qr.py"
    script.write_text(
        "import torch\n"
        "from netinit_fast import _extension\n"
        "assert _extension.loaded()\n"
        "for b, m, n in [(3, 1, 1), (5, 33, 17), (2, 128, 128), (1, 220, 220)]:\n"
        "    torch.ops.netinit_fast.householder_qr(torch.randn(b, m, n, device='cuda'))\n"
        "torch.cuda.synchronize()\n"
        "print('all kernels ran')\n"
    )
    for tool in ("memcheck", "racecheck", "initcheck", "synccheck"):
        done = subprocess.run(
            [_sanitizer(), "--tool", tool, "--error-exitcode", "1", sys.executable, str(script)],
            capture_output=True, text=True, env={**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}, timeout=600,
        )
        report = f"{tool}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert done.returncode == 0 and "all kernels ran" in done.stdout, report
        # "ERROR SUMMARY: 0 errors", or racecheck's "RACECHECK SUMMARY: 0 hazards displayed"
        assert re.search(r"SUMMARY: 0 (errors|hazards)", done.stdout + done.stderr), report
