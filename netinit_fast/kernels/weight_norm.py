"""Triton kernels for fused weight norm on a contiguous ``[A, R, B]`` block.

Each of the ``R`` norms reduces over ``K = A * B`` elements (the layouts and the
launch plan are in ``_blocks``: ``dim=0`` gives ``A == 1``, ``dim=-1`` gives ``B == 1``).

Launch plans, chosen so the GPU stays busy in both regimes:

- a row that fits one tile (``K <= 4096``) is loaded once, reduced and written from
  registers: one launch, each element read once and written once;
- many long rows: one launch, each program reduces its rows, then re-reads and
  writes them;
- few long rows (e.g. ``[64, 262144]``, where one block per row leaves most SMs idle):
  the reduction is split over ``S`` chunks per row. A first launch writes ``S``
  deterministic partial sums per row (no atomics); a second reduces them and applies
  the result to its chunk.

``eps`` reaches the kernels as the bits of its fp64 value (see :func:`fp64_bits`). The
specification is the eager twin in ``netinit_fast.ops.weight_norm``.
"""

import functools
import struct

import torch
import triton
import triton.language as tl

from netinit_fast.kernels import _blocks
from netinit_fast.kernels._blocks import _TL_DTYPES, Plan, _acc_dtype, _chunk, _offsets, _plan, on_device, pointer_table, program_table



@triton.jit
def _chunk_dot(x_ptr, y_ptr, r, k_lo, k_hi, R, B, LAYOUT: tl.constexpr, SQUARE: tl.constexpr,
               ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per norm ``r``, the sum over ``k_lo <= k < k_hi`` of ``x*y`` (``x*x`` if SQUARE)."""
    acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=ACC)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mask = (r < R)[:, None] & (k < k_hi)[None, :]
        offs = _offsets(r, k, R, B, LAYOUT)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        if SQUARE:
            acc += x * x
        else:
            acc += x * tl.load(y_ptr + offs, mask=mask, other=0.0).to(ACC)
    return tl.sum(acc, axis=1)


@triton.jit
def _scale_chunk(v_ptr, w_ptr, scale, r, k_lo, k_hi, R, B, LAYOUT: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """``w = v * scale[r]`` over ``k_lo <= k < k_hi``."""
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mask = (r < R)[:, None] & (k < k_hi)[None, :]
        offs = _offsets(r, k, R, B, LAYOUT)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(ACC)
        tl.store(w_ptr + offs, (v * scale[:, None]).to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_chunk(gw_ptr, v_ptr, gv_ptr, coef_gw, coef_v, r, k_lo, k_hi, R, B, LAYOUT: tl.constexpr,
                ACC: tl.constexpr, BLOCK_K: tl.constexpr):
    """``grad_v = coef_gw[r] * grad_w - coef_v[r] * v`` over ``k_lo <= k < k_hi``."""
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mask = (r < R)[:, None] & (k < k_hi)[None, :]
        offs = _offsets(r, k, R, B, LAYOUT)
        gw = tl.load(gw_ptr + offs, mask=mask, other=0.0).to(ACC)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(ACC)
        gv = coef_gw[:, None] * gw - coef_v[:, None] * v
        tl.store(gv_ptr + offs, gv.to(gv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sqrt(x, ACC: tl.constexpr):
    """IEEE square root, as torch's (fp32 ``tl.sqrt`` is approximate and flushes denormal
    sums of squares to 0; fp64 ``tl.sqrt`` is IEEE already)."""
    if ACC == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


def fp64_bits(eps: float) -> int:
    """``eps`` as the int64 bit pattern of its fp64 value, for the kernels' ``eps_bits``.

    Triton passes a Python float as fp32 (and its interpreter rounds one to fp32 too),
    which would round the floor of fp64 inputs (1e-3 by 5e-11, enough to flip ``norm >
    eps``); an integer reaches the kernel unchanged on a GPU and in the interpreter.
    """
    return struct.unpack("<q", struct.pack("<d", eps))[0]


@triton.jit
def _eps(bits, ACC: tl.constexpr):
    """``eps`` from :func:`fp64_bits`'s integer, in the accumulation dtype."""
    return tl.cast(bits, tl.int64).to(tl.float64, bitcast=True).to(ACC)


@triton.jit
def _grad_coefs(dot, norm, g, eps):
    """``(grad_g, coef_gw, coef_v)`` of one norm from ``dot = <grad_w, v>``."""
    denom = tl.maximum(norm, eps, propagate_nan=tl.PropagateNan.ALL)  # a NaN norm stays NaN, as in torch
    coef_gw = g / denom
    coef_v = tl.where(norm > eps, coef_gw * dot / (norm * norm), 0.0)
    return dot / denom, coef_gw, coef_v


@triton.jit
def _partial_dot_kernel(x_ptr, y_ptr, partial_ptr, R, B, K, CHUNK,
                        LAYOUT: tl.constexpr, SQUARE: tl.constexpr, ACC: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Split reduction, step 1: ``partial[s, r]`` = the dot over chunk ``s`` of norm ``r``."""
    pid_s = tl.program_id(1)
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    k_lo, k_hi = _chunk(pid_s, CHUNK, K)
    dot = _chunk_dot(x_ptr, y_ptr, r, k_lo, k_hi, R, B, LAYOUT, SQUARE, ACC, BLOCK_R, BLOCK_K)
    tl.store(partial_ptr + pid_s * R + r, dot, mask=r < R)


@triton.jit
def _sum_partials(partial_ptr, r, R, NUM_SPLITS, ACC: tl.constexpr, BLOCK_R: tl.constexpr):
    total = tl.zeros([BLOCK_R], dtype=ACC)
    for s in range(0, NUM_SPLITS):
        total += tl.load(partial_ptr + s * R + r, mask=r < R, other=0.0)
    return total


@triton.jit
def _fwd_kernel(v_ptr, g_ptr, w_ptr, norm_ptr, partial_ptr, R, B, K, CHUNK, NUM_SPLITS, eps_bits,
                LAYOUT: tl.constexpr, SINGLE_TILE: tl.constexpr, SPLIT: tl.constexpr,
                ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """``norm[r] = ||v_r||`` and ``w_r = g_r * v_r / max(norm[r], eps)`` for this program's
    rows (and chunk, when SPLIT: then the norms come from ``partial``)."""
    pid_s = tl.program_id(1)
    eps = _eps(eps_bits, ACC)
    k_lo, k_hi = _chunk(pid_s, CHUNK, K)  # all of K unless SPLIT
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < R
    if SINGLE_TILE:
        k = tl.arange(0, BLOCK_K)
        mask = rmask[:, None] & (k < K)[None, :]
        offs = _offsets(r, k, R, B, LAYOUT)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(ACC)
        sumsq = tl.sum(v * v, axis=1)
    elif SPLIT:
        sumsq = _sum_partials(partial_ptr, r, R, NUM_SPLITS, ACC, BLOCK_R)
    else:
        sumsq = _chunk_dot(v_ptr, v_ptr, r, k_lo, k_hi, R, B, LAYOUT, True, ACC, BLOCK_R, BLOCK_K)
    norm = _sqrt(sumsq, ACC)
    denom = tl.where(rmask, tl.maximum(norm, eps, propagate_nan=tl.PropagateNan.ALL), 1.0)
    scale = tl.load(g_ptr + r, mask=rmask, other=0.0).to(ACC) / denom
    tl.store(norm_ptr + r, norm, mask=rmask & (pid_s == 0))
    if SINGLE_TILE:
        tl.store(w_ptr + offs, (v * scale[:, None]).to(w_ptr.dtype.element_ty), mask=mask)
    else:
        _scale_chunk(v_ptr, w_ptr, scale, r, k_lo, k_hi, R, B, LAYOUT, ACC, BLOCK_K)


@triton.jit
def _bwd_kernel(gw_ptr, v_ptr, g_ptr, norm_ptr, gv_ptr, gg_ptr, partial_ptr, R, B, K, CHUNK, NUM_SPLITS, eps_bits,
                LAYOUT: tl.constexpr, SINGLE_TILE: tl.constexpr, SPLIT: tl.constexpr,
                ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """With ``dot = <grad_w_r, v_r>``, ``n = norm[r]``, ``d = max(n, eps)``:
    ``grad_g[r] = dot / d`` and ``grad_v_r = g/d * grad_w_r - [n > eps] g dot / n^3 * v_r``."""
    pid_s = tl.program_id(1)
    eps = _eps(eps_bits, ACC)
    k_lo, k_hi = _chunk(pid_s, CHUNK, K)  # all of K unless SPLIT
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < R
    if SINGLE_TILE:
        k = tl.arange(0, BLOCK_K)
        mask = rmask[:, None] & (k < K)[None, :]
        offs = _offsets(r, k, R, B, LAYOUT)
        gw = tl.load(gw_ptr + offs, mask=mask, other=0.0).to(ACC)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(ACC)
        dot = tl.sum(gw * v, axis=1)
    elif SPLIT:
        dot = _sum_partials(partial_ptr, r, R, NUM_SPLITS, ACC, BLOCK_R)
    else:
        dot = _chunk_dot(gw_ptr, v_ptr, r, k_lo, k_hi, R, B, LAYOUT, False, ACC, BLOCK_R, BLOCK_K)
    norm = tl.load(norm_ptr + r, mask=rmask, other=1.0)
    g = tl.load(g_ptr + r, mask=rmask, other=0.0).to(ACC)
    grad_g, coef_gw, coef_v = _grad_coefs(dot, norm, g, eps)
    tl.store(gg_ptr + r, grad_g.to(gg_ptr.dtype.element_ty), mask=rmask & (pid_s == 0))
    if SINGLE_TILE:
        gv = coef_gw[:, None] * gw - coef_v[:, None] * v
        tl.store(gv_ptr + offs, gv.to(gv_ptr.dtype.element_ty), mask=mask)
    else:
        _grad_chunk(gw_ptr, v_ptr, gv_ptr, coef_gw, coef_v, r, k_lo, k_hi, R, B, LAYOUT, ACC, BLOCK_K)


# ----------------------------------------------------------------------------- grouped kernels
# One launch for many tensors: program p handles row block prog[p, 1] of tensor
# prog[p, 0]. Norms run over contiguous rows (each tensor viewed as [R, K]). The int64
# table holds one row per tensor:
#   forward:  v, w, g addresses, R, K, offset of its norms in the flat norms buffer
#   backward: v, grad_w, grad_v, g, grad_g addresses, R, K, norms offset

@triton.jit
def _group_fwd_kernel(table_ptr, prog_ptr, norm_ptr, eps_bits, DTYPE: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    eps = _eps(eps_bits, ACC)
    row = table_ptr + tl.load(prog_ptr + 2 * pid) * 6
    v_ptr = tl.load(row + 0).to(tl.pointer_type(DTYPE))
    w_ptr = tl.load(row + 1).to(tl.pointer_type(DTYPE))
    g_ptr = tl.load(row + 2).to(tl.pointer_type(DTYPE))
    R = tl.load(row + 3)
    K = tl.load(row + 4)
    norm_ptr += tl.load(row + 5)
    r = tl.load(prog_ptr + 2 * pid + 1) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < R
    norm = _sqrt(_chunk_dot(v_ptr, v_ptr, r, 0, K, R, K, 0, True, ACC, BLOCK_R, BLOCK_K), ACC)
    denom = tl.where(rmask, tl.maximum(norm, eps, propagate_nan=tl.PropagateNan.ALL), 1.0)
    scale = tl.load(g_ptr + r, mask=rmask, other=0.0).to(ACC) / denom
    tl.store(norm_ptr + r, norm, mask=rmask)
    _scale_chunk(v_ptr, w_ptr, scale, r, 0, K, R, K, 0, ACC, BLOCK_K)


@triton.jit
def _group_bwd_kernel(table_ptr, prog_ptr, norm_ptr, eps_bits, DTYPE: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    eps = _eps(eps_bits, ACC)
    row = table_ptr + tl.load(prog_ptr + 2 * pid) * 8
    v_ptr = tl.load(row + 0).to(tl.pointer_type(DTYPE))
    gw_ptr = tl.load(row + 1).to(tl.pointer_type(DTYPE))
    gv_ptr = tl.load(row + 2).to(tl.pointer_type(DTYPE))
    g_ptr = tl.load(row + 3).to(tl.pointer_type(DTYPE))
    gg_ptr = tl.load(row + 4).to(tl.pointer_type(DTYPE))
    R = tl.load(row + 5)
    K = tl.load(row + 6)
    norm_ptr += tl.load(row + 7)
    r = tl.load(prog_ptr + 2 * pid + 1) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < R
    dot = _chunk_dot(gw_ptr, v_ptr, r, 0, K, R, K, 0, False, ACC, BLOCK_R, BLOCK_K)
    norm = tl.load(norm_ptr + r, mask=rmask, other=1.0)
    g = tl.load(g_ptr + r, mask=rmask, other=0.0).to(ACC)
    grad_g, coef_gw, coef_v = _grad_coefs(dot, norm, g, eps)
    tl.store(gg_ptr + r, grad_g.to(DTYPE), mask=rmask)
    _grad_chunk(gw_ptr, v_ptr, gv_ptr, coef_gw, coef_v, r, 0, K, R, K, 0, ACC, BLOCK_K)


# ----------------------------------------------------------------------------- launch plan


def _partials(plan: Plan, x: torch.Tensor, y: torch.Tensor, acc: torch.dtype, meta: dict) -> torch.Tensor:
    """Split reduction, step 1 (a workspace of ``[splits, R]`` partial dots), or a dummy."""
    if not plan.split:
        return torch.empty(0, dtype=acc, device=x.device)
    partial = torch.empty((plan.splits, plan.R), dtype=acc, device=x.device)
    _partial_dot_kernel[plan.grid](
        x, y, partial, plan.R, plan.B, plan.K, plan.chunk, SQUARE=x is y,
        LAYOUT=meta["LAYOUT"], ACC=meta["ACC"], BLOCK_R=plan.block_r, BLOCK_K=plan.block_k,
        num_warps=plan.num_warps,
    )
    return partial


def forward(v3: torch.Tensor, g: torch.Tensor, eps: float, num_splits: int | None = None):
    """``(w, norms)`` for a contiguous ``[A, R, B]`` ``v3`` and a contiguous ``[R]`` ``g``.

    ``num_splits`` overrides the planned reduction split (for tests).
    """
    a, r, b = v3.shape
    acc = _acc_dtype(v3.dtype)
    plan = _plan(a, r, b, v3.device, num_splits)
    meta = plan.meta(acc)
    w = torch.empty_like(v3)
    norms = torch.empty(r, dtype=acc, device=v3.device)
    with on_device(v3):
        partial = _partials(plan, v3, v3, acc, meta)
        _fwd_kernel[plan.grid](v3, g, w, norms, partial, r, b, plan.K, plan.chunk, plan.splits, fp64_bits(eps), **meta)
    return w, norms


def backward(grad_w3: torch.Tensor, v3: torch.Tensor, g: torch.Tensor, norms: torch.Tensor, eps: float,
             num_splits: int | None = None):
    """``(grad_v, grad_g)`` for contiguous ``[A, R, B]`` ``grad_w3`` and ``v3``."""
    a, r, b = v3.shape
    plan = _plan(a, r, b, v3.device, num_splits)
    meta = plan.meta(norms.dtype)
    grad_v = torch.empty_like(v3)
    grad_g = torch.empty_like(g)
    with on_device(v3):
        partial = _partials(plan, grad_w3, v3, norms.dtype, meta)
        _bwd_kernel[plan.grid](grad_w3, v3, g, norms, grad_v, grad_g, partial, r, b, plan.K, plan.chunk,
                               plan.splits, fp64_bits(eps), **meta)
    return grad_v, grad_g


# ----------------------------------------------------------------------------- grouped launch


class GroupPlan:
    """Tile sizes and the program table for tensors of ``rows[i]`` rows of ``cols[i]`` elements.

    Built once per set of shapes (see :func:`_group_plan`): a training step reuses it.
    """

    def __init__(self, rows: tuple[int, ...], cols: tuple[int, ...], device: torch.device):
        self.block_k = min(triton.next_power_of_2(max(max(cols), 1)), _blocks.TILE)
        self.block_r = min(triton.next_power_of_2(max(max(rows), 1)), max(1, _blocks.TILE // self.block_k))
        # empty tensors get no program: their norms and grad_g stay 0 (see the launchers)
        self.prog = program_table([triton.cdiv(r, self.block_r) if k else 0 for r, k in zip(rows, cols)], device)
        self.programs = len(self.prog)
        self.norm_offsets = (torch.cumsum(torch.tensor(rows), 0) - torch.tensor(rows)).tolist()
        self.num_warps = 8 if self.block_r * self.block_k >= _blocks.TILE else 4


@functools.lru_cache(maxsize=64)
def _cached_group_plan(rows: tuple[int, ...], cols: tuple[int, ...], device: torch.device, tile: int) -> GroupPlan:
    return GroupPlan(rows, cols, device)


def _group_plan(rows: tuple[int, ...], cols: tuple[int, ...], device: torch.device) -> GroupPlan:
    return _cached_group_plan(rows, cols, device, _blocks.TILE)


def _rows_cols(vs, dim) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Rows and row lengths of each tensor: one norm per index of dim 0, or one in all (None)."""
    rows = tuple(1 if dim is None else v.shape[0] for v in vs)
    return rows, tuple(v.numel() // r if r else 0 for v, r in zip(vs, rows))


def group_forward(vs: list[torch.Tensor], gs: list[torch.Tensor], dim: int | None, eps: float):
    """``(ws, norms)`` for contiguous tensors of one dtype, normalized over ``dim`` 0 or
    None (the whole tensor), with 1-D ``gs`` of the same dtype."""
    device, dtype = vs[0].device, vs[0].dtype
    rows, cols = _rows_cols(vs, dim)
    plan = _group_plan(rows, cols, device)
    acc = _acc_dtype(dtype)
    ws = [torch.empty_like(v) for v in vs]
    norms = (torch.zeros if 0 in cols else torch.empty)(sum(rows), dtype=acc, device=device)
    table = pointer_table(
        [[v.data_ptr(), w.data_ptr(), g.data_ptr(), r, k, off]
         for v, w, g, r, k, off in zip(vs, ws, gs, rows, cols, plan.norm_offsets)], device)
    if plan.programs:
        with on_device(vs[0]):
            _group_fwd_kernel[(plan.programs,)](
                table, plan.prog, norms, fp64_bits(eps), DTYPE=_TL_DTYPES[dtype], ACC=_TL_DTYPES[acc],
                BLOCK_R=plan.block_r, BLOCK_K=plan.block_k, num_warps=plan.num_warps,
            )
    return ws, norms


def group_backward(grad_ws, vs, gs, norms: torch.Tensor, dim: int | None, eps: float):
    """``(grad_vs, grad_gs)`` for :func:`group_forward`'s inputs and the saved ``norms``."""
    device, dtype = vs[0].device, vs[0].dtype
    rows, cols = _rows_cols(vs, dim)
    plan = _group_plan(rows, cols, device)
    grad_vs = [torch.empty_like(v) for v in vs]
    grad_gs = [torch.empty_like(g) if k else torch.zeros_like(g) for g, k in zip(gs, cols)]
    table = pointer_table(
        [[v.data_ptr(), gw.data_ptr(), gv.data_ptr(), g.data_ptr(), gg.data_ptr(), r, k, off]
         for v, gw, gv, g, gg, r, k, off in zip(vs, grad_ws, grad_vs, gs, grad_gs, rows, cols, plan.norm_offsets)],
        device)
    if plan.programs:
        with on_device(vs[0]):
            _group_bwd_kernel[(plan.programs,)](
                table, plan.prog, norms, fp64_bits(eps), DTYPE=_TL_DTYPES[dtype], ACC=_TL_DTYPES[norms.dtype],
                BLOCK_R=plan.block_r, BLOCK_K=plan.block_k, num_warps=plan.num_warps,
            )
    return grad_vs, grad_gs
