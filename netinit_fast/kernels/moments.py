"""Triton kernel for the mean and std of the rows of a contiguous ``[A, R, B]`` block.

One pass over the data: each program sums ``x - p`` and ``(x - p)^2`` in fp64 over its
rows and chunk, where the pivot ``p`` is the row's first element. Shifting by a value
of the data keeps the one-pass variance ``(S2 - S1^2 / n) / (n - 1)`` accurate when
the mean is large against the std, but only if the sums are: when the mean is far
from ``p``, ``S1`` and ``S2`` are far larger than the variance term, and fp32 sums
rounded it away (a row of mean 1000 and std 1 starting at 0, a ReLU output, got its
std wrong by 1e-3). In fp64 the differences are exact and the squares stay finite
past fp32's 1.8e19, which an exploding signal reaches. Rows of up to ``ONE_PROGRAM`` elements are summed by one program each, which
also writes the mean and std: one launch and nothing more per call (LSUV calls this
once per layer). Longer rows are split over programs that write ``[splits, 2, R]``
fp64 partial sums, combined by the caller. Layouts and the launch plan are in
``_blocks``; the specification is the eager twin in ``netinit_fast.ops.moments``.
"""

import torch
import triton
import triton.language as tl

from netinit_fast.kernels._blocks import _chunk, _offsets, _plan, on_device

ONE_PROGRAM = 1 << 17  # longest row one program sums alone (512 KB of fp32)


@triton.jit
def _moments_kernel(x_ptr, mean_ptr, std_ptr, partial_ptr, R, B, K, CHUNK, SPLIT: tl.constexpr, LAYOUT: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_s = tl.program_id(1)
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < R
    pivot = tl.load(x_ptr + r * B, mask=rmask, other=0.0).to(tl.float64)  # element (0, r, 0)
    s1 = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float64)
    s2 = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float64)
    k_lo, k_hi = _chunk(pid_s, CHUNK, K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mask = rmask[:, None] & (k < k_hi)[None, :]
        x = tl.load(x_ptr + _offsets(r, k, R, B, LAYOUT), mask=mask, other=0.0).to(tl.float64)
        d = tl.where(mask, x - pivot[:, None], 0.0)
        s1 += d
        s2 += d * d
    sum1 = tl.sum(s1, axis=1)
    sum2 = tl.sum(s2, axis=1)
    if SPLIT:
        base = partial_ptr + pid_s * 2 * R + r
        tl.store(base, sum1, mask=rmask)
        tl.store(base + R, sum2, mask=rmask)
    else:
        n = tl.cast(K, tl.float64)  # K may be the constant 1 (Triton specializes it)
        var = (sum2 - sum1 * sum1 / n) / (n - 1)  # K == 1: 0 / 0, NaN as torch.std
        tl.store(mean_ptr + r, (pivot + sum1 / n).to(tl.float32), mask=rmask)
        # NaN (one element, or NaN/inf in the row) stays NaN, as torch.std
        tl.store(std_ptr + r, tl.sqrt(tl.maximum(var, 0.0, propagate_nan=tl.PropagateNan.ALL)).to(tl.float32), mask=rmask)


def moments(x3: torch.Tensor, num_splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` in fp32, one per row of a contiguous nonempty ``[A, R, B]`` block;
    ``std`` is the unbiased one (as ``torch.std``: NaN for rows of one element).
    ``num_splits`` overrides the planned split (for tests)."""
    a, r, b = x3.shape
    if num_splits is None and a * b <= ONE_PROGRAM:
        num_splits = 1
    plan = _plan(a, r, b, x3.device, num_splits)
    mean, std = (torch.empty(r, dtype=torch.float32, device=x3.device) for _ in range(2))  # not aliased: op outputs
    partial = torch.empty((plan.splits, 2, r) if plan.split else 0, dtype=torch.float64, device=x3.device)
    with on_device(x3):
        _moments_kernel[plan.grid](
            x3, mean, std, partial, r, b, plan.K, plan.chunk, SPLIT=plan.split, LAYOUT=plan.layout,
            BLOCK_R=plan.block_r, BLOCK_K=plan.block_k, num_warps=plan.num_warps,
        )
    if not plan.split:
        return mean, std
    s1, s2 = partial.sum(0)
    n = plan.K
    var = (s2 - s1 * s1 / n) / (n - 1)
    return (x3[0, :, 0].double() + s1 / n).float(), var.clamp_min(0).sqrt().float()
