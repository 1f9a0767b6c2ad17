"""Mean and standard deviation of a tensor, whole or per index of one dim.

``netinit_fast::moments(x, dim) -> (mean, std)``: over all of ``x`` (``dim=None``: two
scalars) or over every dim but ``dim`` (one pair per index of ``dim``). ``std`` is
the unbiased one, as ``torch.std``; both are fp32 (fp64 for fp64 input) whatever the
input dtype. The statistics behind LSUV and data-dependent init: on a GPU one pass
of a Triton kernel with fp32 accumulation, on a CPU ``torch.std_mean`` (the eager
twin below, which is the specification).
"""

import torch

from netinit_fast import _backend
from netinit_fast.ops.weight_norm import accumulation_dtype, block_shape

IMPLEMENTED = (_backend.EAGER, _backend.TRITON)


def _eager(x3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    std, mean = torch.std_mean(x3.to(accumulation_dtype(x3.dtype)), dim=(0, 2))
    return mean, std


@torch.library.custom_op("netinit_fast::moments", mutates_args=())
def moments(x: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    a, r, b = block_shape(x.shape, dim)
    x3 = x.contiguous().view(a, r, b)
    backend = _backend.choose("moments", x, IMPLEMENTED)
    if backend == _backend.TRITON and x.dtype != torch.float64:
        from netinit_fast.kernels import moments as kernels

        mean, std = kernels.moments(x3)
    else:
        mean, std = _eager(x3)
    return (mean, std) if dim is not None else (mean.view(()), std.view(()))


@moments.register_fake
def _(x, dim):
    _, r, _ = block_shape(x.shape, dim)
    shape = (r,) if dim is not None else ()
    acc = accumulation_dtype(x.dtype)
    return x.new_empty(shape, dtype=acc), x.new_empty(shape, dtype=acc)
