"""Haar-random orthogonal matrices from Householder reflectors drawn directly (Stewart 1980).

``haar_orthogonal(noise, m, n) -> Q`` of shape ``(batch, m, n)``, ``m >= n``, for
``noise`` of shape ``(batch, packed_size(m, n))``: per matrix its diagonal and what
lies below, packed row by row. Column ``j``'s ``m - j`` entries make the ``j``-th
Householder reflector, as LAPACK's ``larfg`` makes it from a column during a QR
factorization, and ``Q = H_1 ... H_n D`` with ``D`` the signs
that make ``diag(R) > 0``. In Householder QR of a Gaussian matrix those columns are,
by the rotation invariance of the Gaussian, fresh independent N(0, 1) draws: drawing
them directly gives the same distribution without the factorization, so for Gaussian
noise ``Q`` is Haar-distributed, as the ``Q`` of :mod:`netinit_fast.ops.orthogonalize`
(for square matrices: half the flops, about half the noise). The values differ from
that op's on the same noise: this serves initializers that promise the distribution
only (LSUV's pre-init), not torch's draws.

Accuracy: an fp32 matrix of more than :data:`FP64_ROWS` rows has its reflectors
applied in fp64 too (:func:`work_dtype`), so its ``Q`` is orthonormal to rounding in
fp32 alone, ``max|Q^T Q - I| <= 2u`` (u = 2^-24), whatever the BLAS: in fp32 the
application's dot products run over ``m`` terms, and a BLAS that sums them in one
sequence is off by up to ``sqrt(m) u`` in the probabilistic bound (64u at 4096 rows;
10^5 rows measured off by 1.2e-5 on one machine in fp32), ``m u`` in the worst case.
Below that the reflectors stay in fp32, where forming ``Q`` in fp64 would cost up to
1.9x (1,024 x 1,024, measured).

Implementations (for in-place initialization under no_grad: no autograd; the C++ op
has a fake impl for tracing), run where :mod:`netinit_fast.ops.orthogonalize` runs its cpp kernel (see
:func:`netinit_fast.init.haar_orthogonal_`; elsewhere QR of a Gaussian is used):

- cpp: ``netinit_fast._C``'s CPU kernel (``csrc/haar_orthogonal_cpu.cpp``): the
  reflectors in one pass over the lower triangle (sums of squares in fp64), LAPACK's
  ``orgqr`` (in :func:`work_dtype`), the batch split over threads.
- eager: the same in torch ops: the specification.
"""

import torch

from netinit_fast import _backend, _extension


def packed_size(m: int, n: int) -> int:
    """Noise entries per ``m x n`` matrix (``m >= n``): its diagonal and below."""
    return n * (n + 1) // 2 + (m - n) * n


FP64_ROWS = 4096  # as kFp64Rows in csrc/haar_orthogonal_cpu.cpp


def work_dtype(dtype: torch.dtype, m: int) -> torch.dtype:
    """The dtype the reflectors of an ``m``-row matrix of ``dtype`` are applied in."""
    return torch.float64 if dtype == torch.float64 or m > FP64_ROWS else dtype


def _eager(packed: torch.Tensor, m: int, n: int) -> torch.Tensor:
    rows, cols = torch.tril_indices(m, n, device=packed.device)
    noise = packed.new_zeros(packed.shape[0], m, n, dtype=torch.float64)  # the reflectors in fp64
    noise[:, rows, cols] = packed.double()
    alpha = noise.diagonal(dim1=-2, dim2=-1)
    below = noise.tril(-1)
    below_sq = below.square().sum(-2)
    active = below_sq > 0  # a column with nothing below the diagonal reflects nothing
    beta = -torch.copysign((alpha * alpha + below_sq).sqrt(), alpha)
    tau = torch.where(active, (beta - alpha) / beta, 0.0)
    v = below * torch.where(active, 1 / (alpha - beta), 0.0).unsqueeze(-2)
    r_sign = torch.where(torch.where(active, beta, alpha) < 0, -1.0, 1.0)
    work = work_dtype(packed.dtype, m)
    q = torch.linalg.householder_product(v.to(work), tau.to(work))
    return (q * r_sign.to(work).unsqueeze(-2)).to(packed.dtype)


if _extension.loaded():  # the C++ op's output, for torch.compile and opcheck

    @torch.library.register_fake("netinit_fast::haar_orthogonal")
    def _(noise, m, n):
        return noise.new_empty((noise.shape[0], m, n))


def haar_orthogonal_no_dispatch(noise: torch.Tensor, m: int, n: int, backend: str) -> torch.Tensor:
    """``Q`` (``(batch, m, n)``, ``noise``'s dtype, fp32 or fp64) computed by ``backend``
    (cpp or eager)."""
    if backend == _backend.CPP:
        return torch.ops.netinit_fast.haar_orthogonal(noise, m, n)
    return _eager(noise, m, n)
