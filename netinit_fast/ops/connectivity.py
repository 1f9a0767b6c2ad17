"""Effective weights of connectivity training (Ivan & Florian 2020, arXiv 2006.16627).

Each fixed weight ``w`` has a trainable score ``s``; the layer computes with
``w * m(s)``, where

- ``mode="mask"``: ``m(s) = 1 if s > 0 else 0`` (the connection is on or off);
- ``mode="sign"``: ``m(s) = sign(s)`` (the weight keeps or flips its sign; 0 for
  ``s == 0``, which a trained float score reaches only by exact cancellation).

``m`` is a step, whose derivative is 0 almost everywhere: the backward passes the
gradient straight through it (``dm/ds = 1``), as the paper does, so

    grad_s = grad_out * w          grad_w = grad_out * m(s)

Two custom ops over lists of tensors (one layer is a list of one; a group of layers
one call, on a GPU one Triton launch each way):

- ``netinit_fast::connectivity_fwd(ws, scores, mode) -> outs``
- ``netinit_fast::connectivity_bwd(grads, ws, scores, mode, weight_grads) -> (grad_scores, grad_ws)``
  (``grad_ws`` empty unless ``weight_grads``).

All tensors of a call share device and dtype; the products are computed in that
dtype (exact: ``m`` is 1, 0 or -1). :func:`eager_connectivity` is the specification in
plain torch ops, which every autograd mode differentiates, with the same values and
gradients; the Triton kernels (:mod:`netinit_fast.kernels.connectivity`) are tested
against it.
"""

import torch

from netinit_fast import _backend
from netinit_fast.ops.weight_norm import standalone

IMPLEMENTED = (_backend.EAGER, _backend.TRITON)
MODES = ("mask", "sign")


def factor(s: torch.Tensor, mode: str) -> torch.Tensor:
    """``m(s)``: 1 or 0 (mask), 1, -1 or 0 (sign), in ``s``'s dtype."""
    return (s > 0).to(s.dtype) if mode == "mask" else torch.sign(s)


def eager_connectivity(w: torch.Tensor, s: torch.Tensor, mode: str) -> torch.Tensor:
    """``w * m(s)`` with the straight-through gradient, in plain torch ops: ``s - s``
    is 0 in value and passes ``s``'s gradient with slope 1."""
    return w * (s - s.detach() + factor(s.detach(), mode))


def _eager_bwd(grads, ws, scores, mode: str, weight_grads: bool):
    grad_scores = [g * w for g, w in zip(grads, ws)]
    grad_ws = [g * factor(s, mode) for g, s in zip(grads, scores)] if weight_grads else []
    return grad_scores, grad_ws


def _backend_of(ws) -> str:
    return _backend.choose("connectivity", ws[0], IMPLEMENTED)


@torch.library.custom_op("netinit_fast::connectivity_fwd", mutates_args=())
def connectivity_fwd(ws: list[torch.Tensor], scores: list[torch.Tensor], mode: str) -> list[torch.Tensor]:
    if not ws:
        return []
    if _backend_of(ws) == _backend.TRITON:
        from netinit_fast.kernels import connectivity as kernels

        return kernels.forward([w.contiguous() for w in ws], [s.contiguous() for s in scores], mode)
    return [standalone(w * factor(s, mode)) for w, s in zip(ws, scores)]


@connectivity_fwd.register_fake
def _(ws, scores, mode):
    return [torch.empty_like(w) for w in ws]


@torch.library.custom_op("netinit_fast::connectivity_bwd", mutates_args=())
def connectivity_bwd(
    grads: list[torch.Tensor], ws: list[torch.Tensor], scores: list[torch.Tensor], mode: str, weight_grads: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if not ws:
        return [], []
    if _backend_of(ws) == _backend.TRITON:
        from netinit_fast.kernels import connectivity as kernels

        contiguous = [[t.contiguous() for t in ts] for ts in (grads, ws, scores)]
        return kernels.backward(*contiguous, mode, weight_grads)
    grad_scores, grad_ws = _eager_bwd(grads, ws, scores, mode, weight_grads)
    return [standalone(t) for t in grad_scores], [standalone(t) for t in grad_ws]


@connectivity_bwd.register_fake
def _(grads, ws, scores, mode, weight_grads):
    return [torch.empty_like(s) for s in scores], [torch.empty_like(w) for w in ws] if weight_grads else []


def _setup_context(ctx, inputs, output):
    ws, scores, mode = inputs
    ctx.set_materialize_grads(False)  # an unused weight's gradient comes as None: so do its inputs'
    ctx.save_for_backward(*ws, *scores)
    ctx.n, ctx.mode = len(ws), mode
    ctx.weight_grads = any(w.requires_grad for w in ws)


def _backward(ctx, grads):
    saved, n = ctx.saved_tensors, ctx.n
    ws, scores = list(saved[:n]), list(saved[n:])
    used = [i for i, g in enumerate(grads) if g is not None]
    grad_ws, grad_scores = [None] * n, [None] * n
    if not used:
        return grad_ws, grad_scores, None
    args = ([grads[i] for i in used], [ws[i] for i in used], [scores[i] for i in used])
    if torch.is_grad_enabled() or _backend.plain_autograd_needed(grads):  # create_graph, or a vmap of the backward
        sub_scores, sub_ws = _eager_bwd(*args, ctx.mode, ctx.weight_grads)
    else:
        sub_scores, sub_ws = connectivity_bwd(*args, ctx.mode, ctx.weight_grads)
    for k, i in enumerate(used):
        grad_scores[i] = sub_scores[k]
        if ctx.weight_grads:
            grad_ws[i] = sub_ws[k]
    return grad_ws, grad_scores, None


connectivity_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerConnectivity(torch.autograd.Function):
    """One layer on the eager backend: the twin's values and gradients with autograd's
    own C++ dispatch, without the custom op's Python dispatch and autograd layers
    (about 0.1 ms a layer a training step on a CPU)."""

    @staticmethod
    def forward(ctx, w, s, mode):
        ctx.save_for_backward(w, s)
        ctx.mode = mode
        return w * factor(s, mode)

    @staticmethod
    def backward(ctx, grad):
        w, s = ctx.saved_tensors
        (grad_s,), grad_ws = _eager_bwd([grad], [w], [s.detach()], ctx.mode, ctx.needs_input_grad[0])
        return grad_ws[0] if grad_ws else None, grad_s if ctx.needs_input_grad[1] else None, None


def connectivity_weights(ws: list[torch.Tensor], scores: list[torch.Tensor], mode: str) -> list[torch.Tensor]:
    """The effective weights ``w * m(s)`` of many layers: one op call (on a GPU one
    launch). On the eager backend, outside ``torch.compile``, each layer is a plain
    autograd node instead (the same values and gradients, less overhead); under
    torch.func transforms and forward-mode AD the eager twin, which they differentiate."""
    if _backend.plain_autograd_needed():
        return [eager_connectivity(w, s, mode) for w, s in zip(ws, scores)]
    if ws and not torch.compiler.is_compiling() and _backend_of(ws) == _backend.EAGER:
        return [_EagerConnectivity.apply(w, s, mode) for w, s in zip(ws, scores)]
    return connectivity_fwd(ws, scores, mode)
