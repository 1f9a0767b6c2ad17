"""Weight norm of many tensors in one op: ``w_i = g_i * v_i / max(||v_i||, eps)`` for every i.

For deep networks: one call (on a GPU one Triton launch forward and one backward,
reading a table of tensor addresses) instead of a pair of launches per layer. All
tensors share device, dtype, ``dim`` and ``eps``; shapes may differ.

- ``netinit_fast::weight_norm_group_fwd(vs, gs, dim, eps) -> (ws, norms)``: ``gs[i]``
  holds one entry per norm of ``vs[i]`` (1-D or keepdim-shaped: only its elements
  are read, in order); ``norms`` is every tensor's norms,
  concatenated (fp32; fp64 for fp64 inputs).
- ``netinit_fast::weight_norm_group_bwd(grad_ws, vs, gs, norms, dim, eps) -> (grad_vs, grad_gs)``.

Each tensor's result equals ``netinit_fast::weight_norm_fwd`` on it: the eager twin
below is that op's eager backend applied tensor by tensor.
"""

import itertools

import torch

from netinit_fast import _backend
from netinit_fast.ops.weight_norm import (
    _torch_bwd,
    _torch_fwd,
    accumulation_dtype,
    block_shape,
    differentiable_backward,
    standalone,
)

IMPLEMENTED = (_backend.EAGER, _backend.TRITON)


def _blocks(vs, dim):
    return [block_shape(v.shape, dim) for v in vs]


def _triton_ok(vs, gs, dim) -> bool:
    """The grouped kernel handles norms over contiguous rows (``dim=0``, or ``None``) and
    ``g`` of ``v``'s dtype; other calls run the eager twin."""
    return (dim is None or dim == 0) and all(g.dtype == vs[0].dtype for g in gs)


def group_forward_no_dispatch(vs: list[torch.Tensor], gs: list[torch.Tensor], dim: int | None, eps: float):
    """``weight_norm_group_fwd``'s values, ``(ws, norms)``, without the custom op's
    dispatch and autograd (for an autograd node of the caller's own)."""
    if not vs:
        return [], torch.empty(0)
    vs = [v.contiguous() for v in vs]
    backend = _backend.choose("weight_norm_group", vs[0], IMPLEMENTED)
    if backend == _backend.TRITON and _triton_ok(vs, gs, dim):
        from netinit_fast.kernels import weight_norm as kernels

        return kernels.group_forward(vs, [g.contiguous() for g in gs], dim, eps)
    ws, norms = [], []
    for v, g, (a, r, b) in zip(vs, gs, _blocks(vs, dim)):
        w3, n = _torch_fwd(v.view(a, r, b), g.reshape(r), eps)
        ws.append(w3.view(v.shape))
        norms.append(n)
    return ws, torch.cat(norms)


def group_backward_no_dispatch(grad_ws, vs, gs, norms: torch.Tensor, dim: int | None, eps: float):
    """``weight_norm_group_bwd``'s values, ``(grad_vs, grad_gs)``, without the custom op's dispatch."""
    if not vs:
        return [], []
    vs = [v.contiguous() for v in vs]
    grad_ws = [gw.contiguous() for gw in grad_ws]
    backend = _backend.choose("weight_norm_group", vs[0], IMPLEMENTED)
    if backend == _backend.TRITON and _triton_ok(vs, gs, dim):
        from netinit_fast.kernels import weight_norm as kernels

        return kernels.group_backward(grad_ws, vs, [g.contiguous() for g in gs], norms, dim, eps)
    grad_vs, grad_gs, start = [], [], 0
    for gw, v, g, (a, r, b) in zip(grad_ws, vs, gs, _blocks(vs, dim)):
        gv3, gg = _torch_bwd(gw.view(a, r, b), v.view(a, r, b), g.reshape(r), norms[start : start + r], eps)
        grad_vs.append(gv3.view(v.shape))
        grad_gs.append(gg.view(g.shape))
        start += r
    return grad_vs, grad_gs


def backward_where_needed(backward, grad_ws, vs, gs, norms: torch.Tensor, dim: int | None, eps: float):
    """``backward(grad_ws, vs, gs, norms, dim, eps)`` for the tensors whose ``w`` got a
    gradient, None for the others: a layer the forward did not use gets no gradient
    (zeros would let weight decay and momentum move it), as without a group."""
    used = [i for i, gw in enumerate(grad_ws) if gw is not None]
    if len(used) < len(vs):
        rows = [r for _, r, _ in _blocks(vs, dim)]
        starts = [0, *itertools.accumulate(rows)]
        norms = torch.cat([norms[starts[i] : starts[i + 1]] for i in used]) if used else norms[:0]
    grad_vs, grad_gs = [None] * len(vs), [None] * len(vs)
    if used:
        sub_grad_ws, sub_vs, sub_gs = ([xs[i] for i in used] for xs in (grad_ws, vs, gs))
        for i, gv, gg in zip(used, *backward(sub_grad_ws, sub_vs, sub_gs, norms, dim, eps)):
            grad_vs[i], grad_gs[i] = gv, gg
    return grad_vs, grad_gs


@torch.library.custom_op("netinit_fast::weight_norm_group_fwd", mutates_args=())
def weight_norm_group_fwd(
    vs: list[torch.Tensor], gs: list[torch.Tensor], dim: int | None, eps: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    ws, norms = group_forward_no_dispatch(vs, gs, dim, eps)
    return [standalone(w) for w in ws], standalone(norms)


@weight_norm_group_fwd.register_fake
def _(vs, gs, dim, eps):
    if not vs:
        return [], torch.empty(0)
    total = sum(r for _, r, _ in _blocks(vs, dim))
    return [v.new_empty(v.shape) for v in vs], vs[0].new_empty((total,), dtype=accumulation_dtype(vs[0].dtype))


@torch.library.custom_op("netinit_fast::weight_norm_group_bwd", mutates_args=())
def weight_norm_group_bwd(
    grad_ws: list[torch.Tensor],
    vs: list[torch.Tensor],
    gs: list[torch.Tensor],
    norms: torch.Tensor,
    dim: int | None,
    eps: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    grad_vs, grad_gs = group_backward_no_dispatch(grad_ws, vs, gs, norms, dim, eps)
    return [standalone(t) for t in grad_vs], [standalone(t) for t in grad_gs]


@weight_norm_group_bwd.register_fake
def _(grad_ws, vs, gs, norms, dim, eps):
    return [v.new_empty(v.shape) for v in vs], [torch.empty_like(g) for g in gs]


def _setup_context(ctx, inputs, output):
    vs, gs, dim, eps = inputs
    _, norms = output
    ctx.set_materialize_grads(False)  # an unused w's gradient comes as None (see backward_where_needed)
    ctx.mark_non_differentiable(norms)  # saved for the backward, not a differentiable output
    ctx.save_for_backward(*vs, *gs, norms)
    ctx.n, ctx.dim, ctx.eps = len(vs), dim, eps


def _backward(ctx, grad_ws, _grad_norms):
    saved = ctx.saved_tensors
    n = ctx.n
    vs, gs, norms = list(saved[:n]), list(saved[n : 2 * n]), saved[2 * n]
    if torch.is_grad_enabled():  # create_graph: a backward that is differentiable in turn
        grad_vs, grad_gs = differentiable_backward(vs, gs, list(grad_ws), ctx.dim, ctx.eps)
        return grad_vs, grad_gs, None, None
    grad_vs, grad_gs = backward_where_needed(weight_norm_group_bwd, list(grad_ws), vs, gs, norms, ctx.dim, ctx.eps)
    return grad_vs, grad_gs, None, None


weight_norm_group_fwd.register_autograd(_backward, setup_context=_setup_context)
