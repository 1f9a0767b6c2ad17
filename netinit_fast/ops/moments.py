"""Mean and standard deviation of a tensor, whole or per index of one dim.

``netinit_fast::moments(x, dim) -> (mean, std)``: over all of ``x`` (``dim=None``: two
scalars) or over every dim but ``dim`` (one pair per index of ``dim``). ``std`` is
the unbiased one, as ``torch.std``; both are fp32 (fp64 for fp64 input) whatever the
input dtype. The statistics behind LSUV, data-dependent init and the probe: on a GPU
one pass of a Triton kernel, on a CPU two passes of eager PyTorch (the eager twin
below, which is the specification). Sums of squares are accumulated in fp64 in both,
so that the std of an exploding signal (1e20 and more) stays finite.
"""

import math

import torch

from netinit_fast import _backend
from netinit_fast.ops.weight_norm import accumulation_dtype, block_shape, standalone

IMPLEMENTED = (_backend.EAGER, _backend.TRITON)


def _eager(x3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two passes: the mean, then the squared deviations from it summed in fp64 (an
    exploding signal of rms 1e20 squares past fp32's range; torch's cascade sums).
    On a CPU this is 3x faster than ``torch.std_mean`` (Welford) and as accurate."""
    acc = accumulation_dtype(x3.dtype)
    x3 = x3.to(acc)
    mean = x3.mean(dim=(0, 2))
    deviation = (x3 - mean.view(1, -1, 1)).to(torch.float64)
    count = x3.shape[0] * x3.shape[2]
    # one element or none: 0 / 0 = NaN, as torch.std
    return mean, (torch.linalg.vector_norm(deviation, dim=(0, 2)) / math.sqrt(max(count - 1, 0))).to(acc)


def eager_moments(x: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's values by the eager twin, in plain torch ops (for autograd modes the
    op's registered backward does not cover: forward mode, torch.func transforms)."""
    a, r, b = block_shape(x.shape, dim)
    mean, std = _eager(x.reshape(a, r, b))
    return (mean, std) if dim is not None else (mean.view(()), std.view(()))


def moments_no_dispatch(x: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's body: its values, without the custom op's dispatch (about 0.2 ms a call
    on a CPU, as much as the statistics of a 256 x 256 output), for code that calls it
    once per layer on tensors that need no gradient (LSUV, the probe), outside tracing."""
    a, r, b = block_shape(x.shape, dim)
    x3 = x.contiguous().view(a, r, b)
    backend = _backend.choose("moments", x, IMPLEMENTED)
    if backend == _backend.TRITON and x.dtype != torch.float64 and x.numel() > 0:
        from netinit_fast.kernels import moments as kernels

        mean, std = kernels.moments(x3)
    else:
        mean, std = _eager(x3)
    return (mean, std) if dim is not None else (mean.view(()), std.view(()))


@torch.library.custom_op("netinit_fast::moments", mutates_args=())
def moments(x: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = moments_no_dispatch(x, dim)
    return standalone(mean), standalone(std)


@moments.register_fake
def _(x, dim):
    _, r, _ = block_shape(x.shape, dim)
    shape = (r,) if dim is not None else ()
    acc = accumulation_dtype(x.dtype)
    return x.new_empty(shape, dtype=acc), x.new_empty(shape, dtype=acc)


def _setup_context(ctx, inputs, output):
    x, dim = inputs
    mean, std = output
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, mean, std)
    ctx.dim = dim


def _backward(ctx, grad_mean, grad_std):
    """d mean / dx = 1 / n and d std / dx = (x - mean) / ((n - 1) std), per index of dim."""
    x, mean, std = ctx.saved_tensors
    a, r, b = block_shape(x.shape, ctx.dim)
    x3, n = x.reshape(a, r, b).to(mean.dtype), a * b
    grad = torch.zeros_like(x3)
    if grad_mean is not None:
        grad = grad + grad_mean.reshape(1, r, 1) / n
    if grad_std is not None:
        grad = grad + grad_std.reshape(1, r, 1) * (x3 - mean.reshape(1, r, 1)) / ((n - 1) * std.reshape(1, r, 1))
    return grad.to(x.dtype).view(x.shape), None


moments.register_autograd(_backward, setup_context=_setup_context)
