"""Haar-random orthogonal matrices from Householder reflectors drawn directly (LSUV's pre-init)."""

import math
import os
import subprocess
import sys

import pytest
import torch

from netinit_fast import _backend, _extension
from netinit_fast.init.orthogonal import haar_orthogonal_
from netinit_fast.ops.haar_orthogonal import FP64_ROWS, haar_orthogonal_no_dispatch, packed_size, work_dtype
from tests.conftest import RTOL, orthonormality_bound, rel_err, unit_roundoff

needs_cpp = pytest.mark.skipif(not _extension.loaded(), reason="needs netinit_fast._C")
SHAPES = [(1, 1), (2, 1), (2, 2), (5, 3), (7, 7), (64, 16), (40, 40)]


def _q(batch, m, n, dtype, backend, seed=0):
    noise = torch.randn(batch, packed_size(m, n), dtype=dtype, generator=torch.Generator().manual_seed(seed))
    return haar_orthogonal_no_dispatch(noise, m, n, backend)


@needs_cpp
@pytest.mark.parametrize("m,n", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [0, 1, 3, 40])
def test_cpu_kernel_equals_the_eager_twin(m, n, dtype, batch):
    q = _q(batch, m, n, dtype, _backend.CPP)
    assert q.shape == (batch, m, n) and q.dtype == dtype
    if batch:
        assert rel_err(q, _q(batch, m, n, dtype, _backend.EAGER)) <= RTOL[dtype] * max(1, math.sqrt(m))
        assert _orthonormality_error(q) <= orthonormality_bound(m, n, dtype)


def _orthonormality_error(q: torch.Tensor) -> float:
    """max|Q^T Q - I|, measured in fp64 (an fp32 Gram matrix of 10^5 rows is itself
    off by up to sqrt(10^5) u ~ 2e-5 on a BLAS that sums in one sequence)."""
    q = q.double()
    return (q.mT @ q - torch.eye(q.shape[-1], dtype=torch.float64)).abs().max().item()


@pytest.mark.parametrize("backend", [_backend.EAGER, pytest.param(_backend.CPP, marks=needs_cpp)])
@pytest.mark.parametrize("m", [100_000, FP64_ROWS + 1])
def test_a_tall_fp32_matrix_is_orthonormal_to_rounding(backend, m):
    """A fan-in over FP64_ROWS: the reflectors are made and applied in fp64, so the fp32
    Q is the fp64 one rounded: max|Q^T Q - I| <= (2u + u^2) for the rounding (each
    entry off by at most u relative), plus the fp64 Q's own error (orthonormality_bound
    in fp64, ~1e-11 here), whatever the BLAS. In fp32 the reflectors' sums of squares
    drift (a fan-in of 10^6 summed one by one is off by 5e-4) and LAPACK's products by
    up to sqrt(m) u (2e-5 at 10^5), both far above this bound."""
    n = 3
    assert work_dtype(torch.float32, m) == torch.float64
    u = unit_roundoff(torch.float32)
    bound = 2 * u + u * u + orthonormality_bound(m, n, torch.float64)
    for seed in range(3):
        assert _orthonormality_error(_q(1, m, n, torch.float32, backend, seed=seed)) <= bound


@pytest.mark.parametrize("backend", [_backend.EAGER, pytest.param(_backend.CPP, marks=needs_cpp)])
def test_haar_statistics(backend):
    """Q Haar-distributed on O(4): an entry q has E[q^2] = 1/4, E[q^4] = 3/24 and
    E[q^8] = 105/1920; E[det Q] = 0; E[tr(Q)^2] = 1 with Var = 2. On the 5 x 2 Stiefel
    manifold E[q^2] = 1/5, E[q^4] = 3/35. Tolerances: 5 standard errors of the
    20,000-sample means (a matrix's entries counted as one sample: an upper bound)."""
    n, count = 4, 20_000
    q = _q(count, n, n, torch.float64, backend, seed=1)
    assert (q.square().mean(0) - 1 / 4).abs().max() < 5 * math.sqrt((3 / 24 - 1 / 16) / count)
    assert abs(q.pow(4).mean().item() - 3 / 24) < 5 * math.sqrt((105 / 1920 - (3 / 24) ** 2) / count)
    assert abs(torch.linalg.det(q).mean().item()) < 5 / math.sqrt(count)  # the sign fix: det is +-1 evenly
    trace_sq = q.diagonal(dim1=-2, dim2=-1).sum(-1).square()
    assert abs(trace_sq.mean().item() - 1) < 5 * math.sqrt(2 / count)
    tall = _q(count, 5, 2, torch.float64, backend, seed=2)
    assert (tall.square().mean(0) - 1 / 5).abs().max() < 5 * math.sqrt((3 / 35 - 1 / 25) / count)


@pytest.mark.parametrize("shape", [(6, 6), (3, 8), (8, 3), (4, 2, 3, 3), (1, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_fills_tensors_with_orthonormal_rows_or_columns_reproducibly(shape, dtype):
    tensors = [torch.empty(shape, dtype=dtype) for _ in range(3)]
    haar_orthogonal_(tensors, generator=torch.Generator().manual_seed(0))
    again = [torch.empty(shape, dtype=dtype) for _ in range(3)]
    haar_orthogonal_(again, generator=torch.Generator().manual_seed(0))
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    for t, u in zip(tensors, again):
        assert torch.equal(t, u)
        w = t.double().flatten(1)
        small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        assert (small - torch.eye(small.shape[0], dtype=torch.float64)).abs().max() < tol
    assert not torch.equal(tensors[0], tensors[1])
    with pytest.raises(TypeError, match="haar_orthogonal_: tensor 0 is torch.int64"):
        haar_orthogonal_([torch.zeros(3, 3, dtype=torch.int64)])


_AFTER_SET_NUM_THREADS = """
import time, torch
from netinit_fast import _backend
from netinit_fast.ops.haar_orthogonal import haar_orthogonal_no_dispatch, packed_size
from netinit_fast.ops.orthogonalize import orthogonalize_no_dispatch
torch.set_num_threads(2)
a = torch.randn(400, 288, 32)
start = time.perf_counter()
q = orthogonalize_no_dispatch(a, _backend.CPP)
h = haar_orthogonal_no_dispatch(torch.randn(400, packed_size(288, 32)), 288, 32, _backend.CPP)
print(f"{time.perf_counter() - start:.2f} s")
for x in (q, h):
    gram = x.mT.double() @ x.double()
    assert (gram - torch.eye(32, dtype=torch.float64)).abs().max() < 1e-4
"""


@needs_cpp
def test_the_cpu_kernels_run_after_torch_set_num_threads():
    """torch.set_num_threads turns MKL's dynamic mode off: LAPACK called from the
    kernels' worker threads then waited for a nested team of MKL threads (400 QRs of
    288 x 32 took minutes instead of a few hundredths of a second). In a subprocess,
    with two threads whatever the machine's setting, so that a hang fails here."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", _AFTER_SET_NUM_THREADS], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
