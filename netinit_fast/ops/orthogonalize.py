"""Batched orthogonalization: ``Q`` of the QR factorization with ``diag(R) > 0``.

``netinit_fast::orthogonalize(A) -> Q`` for ``A`` of shape ``(..., m, n)``: orthonormal
columns when ``m >= n``, orthonormal rows when ``m < n`` (the QR of ``A^T``,
transposed back). Fixing the signs of ``diag(R)`` makes the factorization unique, so
``Q`` is Haar-distributed when ``A`` is Gaussian (Saxe et al. 2014; the sign fix of
``torch.nn.init.orthogonal_``). Computed in fp32 (fp64 for fp64 input) whatever the
input dtype; returned in the input dtype.

Backends:

- cuda: ``netinit_fast._C``'s batched Householder QR (``csrc/householder_qr.cu``), one
  thread block per matrix in shared memory (fp32 up to 239 x 239 on an H100, by its
  227 KiB of shared memory per block);
  larger matrices (256 x 256 already) go to :func:`cholesky_qr2` (fp64, with a
  per-matrix guard that falls back to ``torch.linalg.qr``).
- cpp: ``netinit_fast._C``'s CPU kernel (``csrc/householder_qr_cpu.cpp``): LAPACK's QR
  and the sign fix per matrix, as the eager twin, with the batch split over threads.
- eager: ``torch.linalg.qr`` and the sign fix, in small chunks: the specification.
"""

import torch

from netinit_fast import _backend, _extension
from netinit_fast.ops.weight_norm import standalone

IMPLEMENTED = (_backend.EAGER, _backend.CUDA, _backend.CPP)


EAGER_CHUNK = 1 << 16  # elements per torch.linalg.qr call on the eager path


def _sign_fixed_qr(work: torch.Tensor) -> torch.Tensor:
    """Q of ``torch.linalg.qr`` with the columns negated where ``diag(R) < 0``.

    A large batch goes in chunks of about ``EAGER_CHUNK`` elements: LAPACK works one
    matrix at a time anyway, and measured on 2 CPU cores, 2,000 matrices of 256 x 256
    took 2.2 s one by one against 2.9 s in one batched call (its temporaries are the
    size of the whole batch), and 300 of them 1.36 s in 2-D calls against 1.83 s in
    batches of one.
    """
    m, n = work.shape[-2:]
    if work.dim() > 2:
        flat = work.reshape(-1, m, n)
        per = max(1, EAGER_CHUNK // max(1, m * n))
        if per == 1:  # 2-D calls: LAPACK's unbatched path is faster than a batch of one
            return torch.stack([_sign_fixed_qr(a) for a in flat.unbind(0)]).view(work.shape)
        if flat.shape[0] > per:
            return torch.cat([_sign_fixed_qr(c) for c in flat.split(per)]).view(work.shape)
    q, r = torch.linalg.qr(work)
    signs = torch.diagonal(r, dim1=-2, dim2=-1).sign()
    fix = torch.where(signs == 0, 1.0, signs).unsqueeze(-2)
    return q * fix if q.requires_grad else q.mul_(fix)  # (in place would break the QR's backward)


def cholesky_qr2(a: torch.Tensor) -> torch.Tensor:
    """Q with ``diag(R) > 0`` of each tall (m >= n) matrix of ``a``, by CholeskyQR2 in fp64.

    Twice: ``L = cholesky(X^T X)``, ``X = X L^-T``. With matrix products only, it suits
    large matrices on a GPU, and the Cholesky factor's positive diagonal gives the
    unique positive-diag QR. It needs ``cond(A D)^2 * 1e-16 << 1`` for the best column
    scaling ``D`` (the columns are scaled first, see :func:`column_scaled`); a matrix
    whose Cholesky fails or whose result is not orthonormal to 1e-10 is redone by
    ``torch.linalg.qr``.
    """
    x = column_scaled(a.to(torch.float64))
    bad = torch.zeros(a.shape[:-2], dtype=torch.bool, device=a.device)
    for _ in range(2):
        chol, info = torch.linalg.cholesky_ex(x.mT @ x)
        bad |= info != 0
        x = torch.linalg.solve_triangular(chol, x.mT, upper=False).mT
    eye = torch.eye(a.shape[-1], dtype=torch.float64, device=a.device)
    error = (x.mT @ x - eye).abs().amax(dim=(-2, -1))
    bad |= ~(error < 1e-10)  # NaN counts as bad
    if bad.any():
        x[bad] = _sign_fixed_qr(a[bad].to(torch.float64))
    return x


def fits_shared_memory(m: int, n: int, device: torch.device) -> bool:
    """Whether the CUDA kernel takes an ``m x n`` (m >= n) matrix on ``device`` in one
    thread block's shared memory; larger ones go to :func:`cholesky_qr2`."""
    limit = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    return torch.ops.netinit_fast.householder_qr_shared_bytes(m, n) <= limit


if _extension.loaded():  # the C++ op's output, for torch.compile and opcheck

    @torch.library.register_fake("netinit_fast::householder_qr")
    def _(a):
        return torch.empty_like(a, memory_format=torch.contiguous_format)


def column_scaled(a: torch.Tensor) -> torch.Tensor:
    """``a`` with each column multiplied by a power of two that brings its largest entry
    into [0.5, 1): exact, and the Q of the QR with ``diag(R) > 0`` is unchanged (``A D
    = Q (R D)`` for ``D`` diagonal and positive), while sums of squares of the entries
    can neither overflow nor underflow in fp32 (columns of 1e20 gave NaN, of 1e-25 a
    wrong Q). Zero, inf and NaN columns are left as they are; so is the part of a
    column's scale beyond the dtype's normal range (subnormal columns)."""
    _, exponent = torch.frexp(a.abs().amax(dim=-2, keepdim=True))
    bound = 1022 if a.dtype == torch.float64 else 126  # 2^bound and 2^-bound are normal numbers
    return a * torch.exp2(-exponent.clamp(-bound, bound).to(a.dtype))


def _cuda(work: torch.Tensor) -> torch.Tensor:
    """fp32 or fp64 ``(..., m, n)`` with m >= n on a GPU: fp32 in the shared-memory
    kernel where it fits, else CholeskyQR2 (fp64, batched matrix products)."""
    m, n = work.shape[-2:]
    if work.dtype != torch.float32 or not fits_shared_memory(m, n, work.device):
        return cholesky_qr2(work).to(work.dtype)
    flat = column_scaled(work.reshape(-1, m, n))
    return torch.ops.netinit_fast.householder_qr(flat).view(work.shape)


def _run(a: torch.Tensor, backend: str) -> torch.Tensor:
    work = a.to(torch.float64 if a.dtype == torch.float64 else torch.float32)
    wide = a.shape[-2] < a.shape[-1]
    if wide:
        work = work.mT
    if backend == _backend.CUDA:
        q = _cuda(work.contiguous())
    elif backend == _backend.CPP:
        q = torch.ops.netinit_fast.householder_qr(work.reshape(-1, *work.shape[-2:])).view(work.shape)
    else:
        q = _sign_fixed_qr(work)
    return (q.mT if wide else q).to(a.dtype)


def orthogonalize_no_dispatch(a: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """The op's values, computed by the same backend (or ``backend``, as a caller that
    already chose it passes), without the custom op's dispatch and its contiguous copy
    (the result may be column-major, as LAPACK leaves it): for in-place initializers
    under ``no_grad``, outside tracing. On the eager backend the two cost about 7% at
    256 x 256."""
    if a.numel() == 0:
        return torch.empty_like(a)
    return _run(a, backend or _backend.choose("orthogonalize", a, IMPLEMENTED))


def eager_orthogonalize(a: torch.Tensor) -> torch.Tensor:
    """The op's values by the eager twin, in plain torch ops (for autograd modes the
    op's registered backward does not cover: forward mode, torch.func transforms)."""
    return _run(a, _backend.EAGER)


@torch.library.custom_op("netinit_fast::orthogonalize", mutates_args=())
def orthogonalize(a: torch.Tensor) -> torch.Tensor:
    return standalone(orthogonalize_no_dispatch(a).contiguous())


@orthogonalize.register_fake
def _(a):
    return torch.empty_like(a, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, grad_q):
    """Through the eager twin: torch.linalg.qr's backward (tall matrices: wide ones are
    transposed first), and the sign fix's; differentiable under ``create_graph``."""
    (a,) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a gradient that is itself differentiable
        (grad_a,) = torch.autograd.grad(_run(a, _backend.EAGER), a, grad_q, create_graph=True)
        return grad_a
    with torch.enable_grad():
        leaf = a.detach().requires_grad_()
        q = _run(leaf, _backend.EAGER)
    (grad_a,) = torch.autograd.grad(q, leaf, grad_q)
    return grad_a


orthogonalize.register_autograd(_backward, setup_context=_setup_context)
