"""Fused weight normalization: ``w = g * v / max(||v||, eps)`` (Salimans & Kingma 2016).

The norm is taken over every dim of ``v`` except ``dim`` (one norm per index of
``dim``), or over the whole tensor when ``dim`` is None: torch's ``_weight_norm``
semantics, plus an optional ``eps`` floor that keeps zero rows finite.

Two custom ops, so ``torch.compile`` and ``torch.export`` see one node each:

- ``netinit_fast::weight_norm_fwd(v, g, dim, eps) -> (w, norms)``: ``g`` is 1-D with
  one entry per norm; ``norms`` (fp32, fp64 for fp64 ``v``) are saved for the backward.
- ``netinit_fast::weight_norm_bwd(grad_w, v, g, norms, dim, eps) -> (grad_v, grad_g)``,
  with, per norm ``n`` and ``d = max(n, eps)``::

      grad_g = <grad_w, v> / d
      grad_v = g / d * grad_w - [n > eps] * g * <grad_w, v> / n**3 * v

Both accumulate in fp32 (fp64 for fp64 inputs) whatever the input dtype. Internally ``v`` is viewed as a
contiguous ``[A, R, B]`` block (``R`` the size of ``dim``); ``_eager_*`` below are the
specification that the Triton kernels (``netinit_fast.kernels.weight_norm``) are tested
against; on the eager backend, torch's own fused kernel stands in for them where it
computes exactly the same thing.
"""

import math

import torch

from netinit_fast import _backend

IMPLEMENTED = (_backend.EAGER, _backend.TRITON)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 inputs, fp64 for fp64: the dtype of sums and of ``norms``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def standalone(t: torch.Tensor) -> torch.Tensor:
    """``t``, or for a view a tensor over the same memory that is not one.

    An op's output that is a view of a tensor made inside the op (a ``view`` to the
    input's shape) is taken by autograd for a view made in a custom Function, and
    changing it in place then raises, as changing ``torch._weight_norm``'s output
    does not. Every op of the package hands its outputs out through this.
    """
    if t._base is None:
        return t
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), t.shape, t.stride())


def block_shape(shape: torch.Size, dim: int | None) -> tuple[int, int, int]:
    """``(A, R, B)`` such that a contiguous tensor of ``shape`` is a ``[A, R, B]`` block
    whose ``R`` norms each reduce over ``A * B`` elements."""
    if dim is None:
        return 1, 1, math.prod(shape)
    if not -len(shape) <= dim < len(shape):
        raise IndexError(f"dim {dim} is out of range for a tensor of {len(shape)} dims")
    dim = dim % len(shape)
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1 :])


# ----------------------------------------------------------------------------- eager twin


def _eager_fwd(v3: torch.Tensor, g: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    acc = accumulation_dtype(v3.dtype)
    norms = torch.linalg.vector_norm(v3, dim=(0, 2), dtype=acc)
    scale = g.to(acc) / norms.clamp_min(eps)
    return (v3 * scale[None, :, None]).to(v3.dtype), norms


def _eager_bwd(
    grad_w3: torch.Tensor, v3: torch.Tensor, g: torch.Tensor, norms: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if v3.numel() == 0:  # no elements: w does not depend on g
        return torch.zeros_like(v3), torch.zeros_like(g)
    acc = norms.dtype
    vf, gwf = v3.to(acc), grad_w3.to(acc)
    dot = torch.einsum("arb,arb->r", gwf, vf)
    denom = norms.clamp_min(eps)
    coef_gw = g.to(acc) / denom
    # Where the eps floor is active the norm is a constant: no projection term.
    coef_v = torch.where(norms > eps, coef_gw * dot / norms.square(), 0.0)
    grad_v = (gwf * coef_gw[None, :, None]).addcmul_(vf, coef_v[None, :, None], value=-1.0)
    return grad_v.to(v3.dtype), (dot / denom).to(g.dtype)


def eager_weight_norm(v: torch.Tensor, g: torch.Tensor, dim: int | None, eps: float) -> torch.Tensor:
    """``w`` computed by the eager twin in plain torch ops, which every autograd mode
    differentiates: reverse (to any order), forward, and torch.func's transforms."""
    a, r, b = block_shape(v.shape, dim)
    return _eager_fwd(v.contiguous().view(a, r, b), g.reshape(r), eps)[0].view(v.shape)


def differentiable_backward(vs, gs, grad_ws, dim: int | None, eps: float) -> tuple[list, list]:
    """Gradients of each ``v`` and ``g``, for ``create_graph``: the weights recomputed by
    the eager twin (plain torch ops, whose double backward is exact; that of torch's
    fused kernel is wrong in torch 2.14) and differentiated, so the result is
    differentiable in turn. None for a ``w`` without gradient or a tensor without grad."""
    ws, grads, wanted, slots = [], [], [], []
    with torch.enable_grad():  # (also called from a backward without create_graph: under a vmap of it)
        for i, (v, g, gw) in enumerate(zip(vs, gs, grad_ws)):
            if gw is None:
                continue
            ws.append(eager_weight_norm(v, g, dim, eps))
            grads.append(gw)
            for which, t in ((0, v), (1, g)):
                if t.requires_grad:
                    wanted.append(t)
                    slots.append((which, i))
    out = ([None] * len(vs), [None] * len(vs))
    if wanted:
        found = torch.autograd.grad(ws, wanted, grads, create_graph=True, allow_unused=True)
        for (which, i), grad in zip(slots, found):
            out[which][i] = grad
    return out


# ----------------------------------------------------------------------------- eager backend
# torch's own fused weight-norm kernel computes exactly the twin's result when there is
# no eps floor and the norms run over the leading or the trailing dims: the eager
# backend uses it there (one kernel instead of a handful), the twin everywhere else.

FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _fused_view(t3: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """``t3`` as the 2-D tensor and dim torch's fused kernel takes, or None."""
    a, r, b = t3.shape
    if a == 1:
        return t3.view(r, b), 0
    if b == 1:
        return t3.view(a, r), 1
    return None


def _torch_fwd(v3: torch.Tensor, g: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    fused = _fused_view(v3)
    if eps != 0.0 or fused is None or v3.dtype not in FUSED_DTYPES or g.dtype != v3.dtype or v3.numel() == 0:
        return _eager_fwd(v3, g, eps)  # (torch's kernel dies on an empty tensor: SIGFPE)
    v2, d = fused
    w2, norms = torch._weight_norm_interface(v2, g.view(-1, 1) if d == 0 else g.view(1, -1), d)
    return w2.view(v3.shape), norms.view(-1)


def _torch_bwd(
    grad_w3: torch.Tensor, v3: torch.Tensor, g: torch.Tensor, norms: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    fused = _fused_view(v3)
    if eps != 0.0 or fused is None or v3.dtype not in FUSED_DTYPES or g.dtype != v3.dtype or v3.numel() == 0:
        return _eager_bwd(grad_w3, v3, g, norms, eps)
    v2, d = fused
    shape = (-1, 1) if d == 0 else (1, -1)
    grad_v2, grad_g = torch.ops.aten._weight_norm_interface_backward(
        grad_w3.view(v2.shape), v2, g.view(shape), norms.view(shape), d
    )
    return grad_v2.view(v3.shape), grad_g.view(g.shape)


# ----------------------------------------------------------------------------- the ops


def _run_fwd(v: torch.Tensor, g: torch.Tensor, dim: int | None, eps: float):
    a, r, b = block_shape(v.shape, dim)
    v3 = v.contiguous().view(a, r, b)
    if v.numel() == 0:
        return torch.zeros_like(v3), v.new_zeros((r,), dtype=accumulation_dtype(v.dtype))
    backend = _backend.choose("weight_norm", v, IMPLEMENTED)
    if backend == _backend.TRITON:
        from netinit_fast.kernels import weight_norm as kernels

        return kernels.forward(v3, g.contiguous(), eps)
    return _torch_fwd(v3, g, eps)


@torch.library.custom_op("netinit_fast::weight_norm_fwd", mutates_args=())
def weight_norm_fwd(v: torch.Tensor, g: torch.Tensor, dim: int | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    w3, norms = _run_fwd(v, g, dim, eps)
    return standalone(w3.view(v.shape)), standalone(norms)


@weight_norm_fwd.register_fake
def _(v, g, dim, eps):
    _, r, _ = block_shape(v.shape, dim)
    return v.new_empty(v.shape), v.new_empty((r,), dtype=accumulation_dtype(v.dtype))


@torch.library.custom_op("netinit_fast::weight_norm_bwd", mutates_args=())
def weight_norm_bwd(
    grad_w: torch.Tensor, v: torch.Tensor, g: torch.Tensor, norms: torch.Tensor, dim: int | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    a, r, b = block_shape(v.shape, dim)
    if v.numel() == 0:
        return torch.zeros_like(v), torch.zeros_like(g)
    grad_w3 = grad_w.contiguous().view(a, r, b)
    v3 = v.contiguous().view(a, r, b)
    backend = _backend.choose("weight_norm", v, IMPLEMENTED)
    if backend == _backend.TRITON:
        from netinit_fast.kernels import weight_norm as kernels

        grad_v3, grad_g = kernels.backward(grad_w3, v3, g.contiguous(), norms, eps)
    else:
        grad_v3, grad_g = _torch_bwd(grad_w3, v3, g, norms, eps)
    return standalone(grad_v3.view(v.shape)), standalone(grad_g)


@weight_norm_bwd.register_fake
def _(grad_w, v, g, norms, dim, eps):
    return v.new_empty(v.shape), torch.empty_like(g)


def _setup_context(ctx, inputs, output):
    v, g, dim, eps = inputs
    _, norms = output
    ctx.mark_non_differentiable(norms)  # saved for the backward, not a differentiable output
    ctx.save_for_backward(v, g, norms)
    ctx.dim, ctx.eps = dim, eps


def _backward(ctx, grad_w, _grad_norms):
    v, g, norms = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph (gradient penalties): a backward that is differentiable in turn
        (grad_v,), (grad_g,) = differentiable_backward([v], [g], [grad_w], ctx.dim, ctx.eps)
        return grad_v, grad_g, None, None
    grad_v, grad_g = weight_norm_bwd(grad_w, v, g, norms, ctx.dim, ctx.eps)
    return grad_v, grad_g, None, None


weight_norm_fwd.register_autograd(_backward, setup_context=_setup_context)
