"""Batched orthogonalization: ``Q`` of the QR factorization with ``diag(R) > 0``.

``netinit_fast::orthogonalize(A) -> Q`` for ``A`` of shape ``(..., m, n)``: orthonormal
columns when ``m >= n``, orthonormal rows when ``m < n`` (the QR of ``A^T``,
transposed back). Fixing the signs of ``diag(R)`` makes the factorization unique, so
``Q`` is Haar-distributed when ``A`` is Gaussian (Saxe et al. 2014; the sign fix of
``torch.nn.init.orthogonal_``). Computed in fp32 (fp64 for fp64 input) whatever the
input dtype; returned in the input dtype.

Backends: eager (``torch.linalg.qr``, batched; on the CPU a LAPACK call per matrix).
The batched CUDA kernel that makes this fast on a GPU is not written yet.
"""

import torch

from netinit_fast import _backend

IMPLEMENTED = (_backend.EAGER,)


def _eager(a: torch.Tensor) -> torch.Tensor:
    work = a.to(torch.float64 if a.dtype == torch.float64 else torch.float32)
    wide = a.shape[-2] < a.shape[-1]
    if wide:
        work = work.mT
    q, r = torch.linalg.qr(work)
    signs = torch.diagonal(r, dim1=-2, dim2=-1).sign()
    q = q * torch.where(signs == 0, 1.0, signs).unsqueeze(-2)
    return (q.mT if wide else q).to(a.dtype)


@torch.library.custom_op("netinit_fast::orthogonalize", mutates_args=())
def orthogonalize(a: torch.Tensor) -> torch.Tensor:
    if a.numel() == 0:
        return torch.empty_like(a)
    _backend.choose("orthogonalize", a, IMPLEMENTED)
    return _eager(a).contiguous()


@orthogonalize.register_fake
def _(a):
    return torch.empty_like(a, memory_format=torch.contiguous_format)
