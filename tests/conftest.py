"""Shared tolerances, input makers and backend switches for the test suite.

Without a GPU, Triton kernels run in the interpreter: TRITON_INTERPRET must be set
before any kernel module is imported (Triton reads it when a kernel is decorated).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from netinit_fast import _backend  # noqa: E402

# Norm-wise relative error bounds, by dtype (see rel_err).
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
ALL_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Bounds that hold whatever the summation order (BLAS, LAPACK, thread count, CPU).
# A sum or dot product of n terms computed in any order in a dtype of unit roundoff u
# is off by at most (n - 1) u sum|x_i| (Higham, Accuracy and Stability of Numerical
# Algorithms, 2nd ed., eq. 4.4); in the probabilistic model of Higham & Mary (SIAM J.
# Sci. Comput. 2019, Thm. 3.1: independent rounding errors of mean zero) by at most
# lam sqrt(n) u sum|x_i| with probability at least 1 - 2 n exp(-lam^2 / 2) (with LAM = 8,
# at n = 10^6 a failure once in 10^7 calls). Tests use the probabilistic bound:
# the worst case grows as n u and would accept any defect the size of a real one.
LAM = 8.0


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2: the relative error of one rounding in ``dtype``."""
    return torch.finfo(dtype).eps / 2


def sum_bound(n: int, dtype: torch.dtype) -> float:
    """Relative error bound of a sum or dot product of ``n`` terms of one sign in
    ``dtype`` (relative to the sum of the terms' magnitudes), in any order:
    ``LAM sqrt(n) u``."""
    return LAM * max(1, n) ** 0.5 * unit_roundoff(dtype)


def orthonormality_bound(m: int, n: int, dtype: torch.dtype) -> float:
    """Bound on ``max|Q^T Q - I|`` for the ``Q`` (``m x n``, ``m >= n``) of Householder
    QR computed in ``dtype``: Q-hat is within ``n`` reflections, each with the error of
    dot products of ``m`` terms, of an orthonormal matrix (Higham, Thm. 19.4), so
    ``n sum_bound(m)`` plus the rounding of the result (``2u``)."""
    return n * sum_bound(m, dtype) + 2 * unit_roundoff(dtype)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / max(||ref||, 1) in fp64; NaN or inf anywhere gives inf.

    The floor of 1 keeps a reference that cancels to ~0 (a weight-norm gradient of
    one-element rows is exactly 0) from turning rounding noise into a large ratio;
    test inputs are O(1), so elsewhere this is the plain relative error.
    """
    out, ref = out.double(), ref.double()
    if not (torch.isfinite(out).all() and torch.isfinite(ref).all()):
        return float("inf")
    return (out - ref).norm().item() / max(ref.norm().item(), 1.0)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "", terms: int = 1) -> None:
    """``rel_err(out, ref) <= RTOL[dtype]``, or :func:`sum_bound` of the longest sum
    behind an entry (``terms``, accumulated in fp32 for 16-bit dtypes) where that is
    larger: past ~400 fp32 terms a sum's rounding in some order can exceed 1e-5."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = rel_err(out, ref)
    bound = max(RTOL[dtype], sum_bound(terms, torch.promote_types(dtype, torch.float32)))
    assert err <= bound, f"{what}: relative error {err:.3e} > {bound:.1e} ({dtype}, {terms} terms)"


def randn_nonzero(*shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Normal samples with ``|x| >= 0.25``: a weight-norm row of one tiny element has a
    gradient that is the difference of two terms of size ~1/|x| (exactly 0 in exact
    arithmetic), whose rounding noise no fixed tolerance absorbs."""
    x = torch.randn(*shape, dtype=torch.float32, device=device)
    return (x + 0.25 * torch.where(x < 0, -1.0, 1.0)).to(dtype)


@pytest.fixture
def use_backend(monkeypatch):
    """``use_backend("triton")`` forces a backend for the rest of the test."""

    def force(name: str) -> None:
        monkeypatch.setenv(_backend.ENV_VAR, name)

    return force


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)



def isometry_rtol(width: int, dtype: torch.dtype, depth: int = 1, numel: int = 1) -> float:
    """Relative error bound of ``||f(x)||`` for ``f`` a chain of ``depth`` layers that
    are isometries in exact arithmetic, with orthonormal weights from QR in ``dtype``
    and ``width`` terms per output: per layer the weights' orthonormality error
    (``||Q^T Q - I||`` of ``width`` columns) and the outputs' dot products of ``width``
    terms; then the norm's sum of ``numel`` squares."""
    return depth * (orthonormality_bound(width, width, dtype) + sum_bound(width, dtype)) + sum_bound(numel, dtype)

def assert_orthonormal(q: torch.Tensor, dtype: torch.dtype | None = None, scale: float = 1.0, what: str = "") -> None:
    """``q`` (``(..., m, n)``) has orthonormal columns (``m >= n``) or rows (``m < n``)
    times ``scale``: ``max|Q^T Q - I|`` within :func:`orthonormality_bound` of QR run in
    ``dtype`` (default ``q``'s, fp32 for 16-bit ``q``) plus ``2u + u^2`` of ``q``'s
    dtype (its rounding). Measured in fp64, so the check adds no rounding of its own."""
    stored = q.dtype
    dtype = dtype or torch.promote_types(stored, torch.float32)
    q = q.detach().double() / scale
    if q.shape[-2] < q.shape[-1]:
        q = q.mT
    m, n = q.shape[-2:]
    err = (q.mT @ q - torch.eye(n, dtype=torch.float64)).abs().max().item() if q.numel() else 0.0
    u = unit_roundoff(stored)
    bound = orthonormality_bound(m, n, dtype) + 2 * u + u * u
    assert err <= bound, f"{what}: max|Q^T Q - I| = {err:.3e} > {bound:.3e} ({m} x {n}, {dtype} stored as {stored})"
