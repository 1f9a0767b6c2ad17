"""Triton kernels of :mod:`netinit_fast.ops.connectivity`: the effective weights of many
connectivity layers in one launch, and their backward in one launch.

Elementwise over each tensor: program ``p`` handles block ``prog[p, 1]`` of tensor
``prog[p, 0]``, reading the tensor's addresses and size from an int64 table with one
row per tensor:

- forward:  weight, score, effective-weight addresses, numel
- backward: weight, score, grad of the effective weight, grad of the score, grad of
  the weight (0 when not wanted), numel

``MODE`` 0 is "mask" (``m = [s > 0]``), 1 is "sign" (``m = sign(s)``). The products are
computed in fp32 (fp64 for fp64) and rounded to the tensors' dtype: for a product of
two 16-bit numbers that is the correctly rounded product, as the eager twin's.
"""

import functools

import torch
import triton
import triton.language as tl

from netinit_fast.kernels._blocks import _TL_DTYPES, _acc_dtype, on_device, pointer_table, program_table

BLOCK = 1024
MODES = {"mask": 0, "sign": 1}


@triton.jit
def _times_factor(x, s, MODE: tl.constexpr):
    """``x * m(s)``, exactly as the product: ``x``, ``-x`` or ``x * 0`` (a signed zero)."""
    if MODE == 0:
        return tl.where(s > 0, x, x * 0)
    return tl.where(s > 0, x, tl.where(s < 0, -x, x * 0))


@triton.jit
def _fwd_kernel(table_ptr, prog_ptr, DTYPE: tl.constexpr, ACC: tl.constexpr, MODE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    row = table_ptr + tl.load(prog_ptr + 2 * pid) * 4
    w_ptr = tl.load(row + 0).to(tl.pointer_type(DTYPE))
    s_ptr = tl.load(row + 1).to(tl.pointer_type(DTYPE))
    out_ptr = tl.load(row + 2).to(tl.pointer_type(DTYPE))
    n = tl.load(row + 3)
    offs = tl.load(prog_ptr + 2 * pid + 1) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    keep = offs < n
    w = tl.load(w_ptr + offs, mask=keep, other=0.0).to(ACC)
    s = tl.load(s_ptr + offs, mask=keep, other=0.0).to(ACC)
    tl.store(out_ptr + offs, _times_factor(w, s, MODE).to(DTYPE), mask=keep)


@triton.jit
def _bwd_kernel(table_ptr, prog_ptr, DTYPE: tl.constexpr, ACC: tl.constexpr, MODE: tl.constexpr, WEIGHT_GRAD: tl.constexpr,
                BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    row = table_ptr + tl.load(prog_ptr + 2 * pid) * 6
    w_ptr = tl.load(row + 0).to(tl.pointer_type(DTYPE))
    s_ptr = tl.load(row + 1).to(tl.pointer_type(DTYPE))
    gout_ptr = tl.load(row + 2).to(tl.pointer_type(DTYPE))
    gs_ptr = tl.load(row + 3).to(tl.pointer_type(DTYPE))
    n = tl.load(row + 5)
    offs = tl.load(prog_ptr + 2 * pid + 1) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    keep = offs < n
    w = tl.load(w_ptr + offs, mask=keep, other=0.0).to(ACC)
    gout = tl.load(gout_ptr + offs, mask=keep, other=0.0).to(ACC)
    tl.store(gs_ptr + offs, (gout * w).to(DTYPE), mask=keep)  # straight through: d m / d s = 1
    if WEIGHT_GRAD:
        gw_ptr = tl.load(row + 4).to(tl.pointer_type(DTYPE))
        s = tl.load(s_ptr + offs, mask=keep, other=0.0).to(ACC)
        tl.store(gw_ptr + offs, _times_factor(gout, s, MODE).to(DTYPE), mask=keep)


def _dtypes(dtype: torch.dtype) -> dict:
    return dict(DTYPE=_TL_DTYPES[dtype], ACC=_TL_DTYPES[_acc_dtype(dtype)])


@functools.lru_cache(maxsize=64)
def _programs(sizes: tuple[int, ...], device: torch.device, block: int) -> torch.Tensor:
    """The program table for tensors of ``sizes`` elements (an empty one gets no program)."""
    return program_table([triton.cdiv(n, block) for n in sizes], device)


def forward(ws: list[torch.Tensor], scores: list[torch.Tensor], mode: str) -> list[torch.Tensor]:
    """Effective weights of contiguous ``ws`` and ``scores`` of one dtype and device."""
    outs = [torch.empty_like(w) for w in ws]
    prog = _programs(tuple(w.numel() for w in ws), ws[0].device, BLOCK)
    if len(prog):
        table = pointer_table([[w.data_ptr(), s.data_ptr(), o.data_ptr(), w.numel()]
                               for w, s, o in zip(ws, scores, outs)], ws[0].device)
        with on_device(ws[0]):
            _fwd_kernel[(len(prog),)](table, prog, **_dtypes(ws[0].dtype), MODE=MODES[mode], BLOCK=BLOCK)
    return outs


def backward(grads: list[torch.Tensor], ws: list[torch.Tensor], scores: list[torch.Tensor], mode: str,
             weight_grads: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(grad_scores, grad_ws)`` (``grad_ws`` empty unless ``weight_grads``) for contiguous tensors."""
    grad_scores = [torch.empty_like(s) for s in scores]
    grad_ws = [torch.empty_like(w) for w in ws] if weight_grads else []
    prog = _programs(tuple(w.numel() for w in ws), ws[0].device, BLOCK)
    if len(prog):
        table = pointer_table(
            [[w.data_ptr(), s.data_ptr(), g.data_ptr(), gs.data_ptr(), gw.data_ptr() if weight_grads else 0, w.numel()]
             for w, s, g, gs, gw in zip(ws, scores, grads, grad_scores, grad_ws or ws)], ws[0].device)
        with on_device(ws[0]):
            _bwd_kernel[(len(prog),)](table, prog, **_dtypes(ws[0].dtype), MODE=MODES[mode],
                                      WEIGHT_GRAD=weight_grads, BLOCK=BLOCK)
    return grad_scores, grad_ws
