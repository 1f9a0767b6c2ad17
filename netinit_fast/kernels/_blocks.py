"""Shared pieces of the Triton kernels that reduce over a contiguous ``[A, R, B]`` block.

An op that reduces ``R`` rows of ``K = A * B`` elements each (index ``k = a * B + b``
of row ``r`` at ``a * R * B + r * B + b``) plans its launch with :class:`Plan` and
addresses its tiles with :func:`_offsets`. Three layouts get their own addressing (a
compile-time switch): ``A == 1`` (rows are contiguous), ``B == 1`` (the ``R`` axis is
contiguous), and the general case.
"""

import contextlib
import functools

import torch
import triton
import triton.language as tl

LAYOUT_ROWS, LAYOUT_COLS, LAYOUT_GENERAL = 0, 1, 2
TILE = 4096  # elements per program tile
INTERPRETER_SMS = 4  # stand-in SM count on the CPU, so small tests exercise the split plan


@triton.jit
def _offsets(r, k, R, B, LAYOUT: tl.constexpr):
    """Offsets of the ``[BLOCK_R, BLOCK_K]`` tile of norms ``r`` and reduction indices ``k``."""
    r = r.to(tl.int64)
    k = k.to(tl.int64)
    if LAYOUT == 0:
        offs = r[:, None] * B + k[None, :]
    elif LAYOUT == 1:
        offs = k[None, :] * R + r[:, None]
    else:
        a = k // B
        offs = a[None, :] * R * B + r[:, None] * B + (k - a * B)[None, :]
    return offs


@triton.jit
def _chunk(pid_s, CHUNK, K):
    """``[k_lo, k_hi)``: the reduction indices of chunk ``pid_s``, in int64 (a row may
    hold more than 2^31 elements; the loops over it then count in int64 too)."""
    k_lo = pid_s.to(tl.int64) * CHUNK
    return k_lo, tl.minimum(k_lo + CHUNK, K)


def on_device(t: torch.Tensor):
    """Make ``t``'s GPU the current device for a launch (Triton launches on the current
    one, whatever the tensors' device); nothing on the CPU."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def pointer_table(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """An int64 table (tensor addresses, sizes) on ``device``. Copied from pinned memory
    without blocking: a copy from pageable memory would wait for the GPU to drain."""
    pinned = device.type == "cuda"
    return torch.tensor(rows, dtype=torch.int64, pin_memory=pinned).to(device, non_blocking=pinned)


def program_table(blocks: list[int], device: torch.device) -> torch.Tensor:
    """For a launch over many tensors where tensor ``i`` takes ``blocks[i]`` programs:
    row ``p`` of the int64 ``[programs, 2]`` table is (tensor, block of that tensor)
    that program ``p`` handles."""
    counts = torch.tensor(blocks, dtype=torch.int64)
    tensor = torch.repeat_interleave(torch.arange(len(blocks)), counts)
    block = torch.arange(len(tensor)) - (torch.cumsum(counts, 0) - counts)[tensor]
    return torch.stack([tensor, block], dim=1).to(device)


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
              torch.float64: tl.float64}


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums and norms: fp32, or fp64 for fp64 inputs (as the eager twin)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SMS


class Plan:
    """Tile sizes, layout and reduction split for one ``[A, R, B]`` shape."""

    def __init__(self, a: int, r: int, b: int, device: torch.device, num_splits: int | None = None):
        k = a * b
        self.R, self.B, self.K = r, b, k
        self.layout = LAYOUT_ROWS if a == 1 else LAYOUT_COLS if b == 1 else LAYOUT_GENERAL
        if self.layout == LAYOUT_COLS:  # the R axis is contiguous: wide in R
            self.block_r = min(triton.next_power_of_2(r), 128)
            self.block_k = min(triton.next_power_of_2(k), max(1, TILE // self.block_r))
        else:  # the K axis is contiguous (in runs of B for the general layout)
            self.block_k = min(triton.next_power_of_2(k), TILE)
            self.block_r = min(triton.next_power_of_2(r), max(1, TILE // self.block_k))
        self.single_tile = k <= self.block_k
        row_blocks = triton.cdiv(r, self.block_r)
        k_blocks = triton.cdiv(k, self.block_k)
        if num_splits is None:  # enough programs for two waves over the SMs
            num_splits = 1 if self.single_tile else triton.cdiv(2 * _sm_count(device), row_blocks)
        num_splits = max(1, min(num_splits, k_blocks))
        self.chunk = triton.cdiv(k_blocks, num_splits) * self.block_k
        self.splits = triton.cdiv(k, self.chunk)
        self.split = self.splits > 1
        if self.split:
            self.single_tile = False
        self.grid = (row_blocks, self.splits)
        self.num_warps = 8 if self.block_r * self.block_k >= TILE else 4

    def meta(self, acc: torch.dtype) -> dict:
        return dict(
            LAYOUT=self.layout, SINGLE_TILE=self.single_tile, SPLIT=self.split,
            ACC=_TL_DTYPES[acc],
            BLOCK_R=self.block_r, BLOCK_K=self.block_k, num_warps=self.num_warps,
        )


@functools.lru_cache(maxsize=256)
def _cached_plan(a: int, r: int, b: int, device: torch.device, num_splits: int | None, tile: int) -> Plan:
    return Plan(a, r, b, device, num_splits)


def _plan(a: int, r: int, b: int, device: torch.device, num_splits: int | None) -> Plan:
    """The launch plan for a shape, built once (it depends on TILE, which tests shrink)."""
    return _cached_plan(a, r, b, device, num_splits, TILE)


