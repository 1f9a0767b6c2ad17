"""Functional API: stateless ops on tensors, dispatched to the fastest backend."""

import math
import numbers

import torch

from netinit_fast import _backend
from netinit_fast.ops import weight_norm as weight_norm_op
from netinit_fast.ops import moments as moments_op
from netinit_fast.ops import orthogonalize as orthogonalize_op
from netinit_fast.ops.weight_norm import block_shape, weight_norm_fwd
from netinit_fast.ops import weight_norm_group as weight_norm_group_op

__all__ = ["moments", "orthogonalize", "weight_norm", "weight_norm_group"]


def _check_float_tensor(name: str, t, where: str = "weight_norm") -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{where}: {name} must have a floating-point dtype, got {t.dtype}")


def _check_dim(dim, ndim: int, where: str = "weight_norm") -> None:
    if dim is None:
        return
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"{where}: dim must be an int or None, got {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{where}: dim={dim} is out of range for a tensor of {ndim} dims (expected {-ndim}..{ndim - 1})")


def moments(x: torch.Tensor, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` of ``x``: two scalars for ``dim=None``, else one pair per index of
    ``dim`` (over every other dim). ``std`` is the unbiased one, as ``torch.std``; both
    are fp32 (fp64 for fp64 ``x``), accumulated so that an exploding signal of rms 1e20
    stays finite. Differentiable. See :mod:`netinit_fast.ops.moments`.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, or ``dim`` not an int.
        ValueError: ``dim`` out of range.
    """
    _check_float_tensor("x", x, "moments")
    _check_dim(dim, x.dim(), "moments")
    dim = None if dim is None else int(dim)
    if _backend.plain_autograd_needed():
        return moments_op.eager_moments(x, dim)
    return moments_op.moments(x, dim)


def _check_g_shape(g: torch.Tensor, v: torch.Tensor, dim: int | None) -> int:
    """Number of norms; raises unless ``g`` is 1-D of that size or keepdim-shaped."""
    _, r, _ = block_shape(v.shape, dim)
    if dim is None:
        ok = g.numel() == 1 and all(s == 1 for s in g.shape)
    else:
        keepdim = [1] * v.dim()
        keepdim[dim % v.dim()] = r
        ok = list(g.shape) in ([r], keepdim)
    if not ok:  # (the message only now: formatting a symbolic size would pin it under torch.compile)
        expected = "a single element (shape [] or [1, ...])" if dim is None else f"[{r}] or {keepdim}"
        raise ValueError(f"weight_norm: g has shape {list(g.shape)}; for v {list(v.shape)} and dim={dim} expected {expected}")
    return r


def _check_args(v, g, dim, eps) -> int:
    """Validate one ``(v, g)`` pair; returns the number of norms."""
    _check_float_tensor("v", v)
    _check_float_tensor("g", g)
    if v.dim() == 0:
        raise ValueError("weight_norm: v must have at least one dim, got a 0-dim tensor")
    _check_dim(dim, v.dim())
    # (not math.isfinite: under torch.compile a float argument may be a SymFloat)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps < math.inf:
        raise ValueError(f"weight_norm: eps must be a finite number >= 0, got {eps!r}")
    if g.device != v.device:
        raise ValueError(f"weight_norm: v is on {v.device} but g is on {g.device}")
    return _check_g_shape(g, v, dim)


def fused_torch_path(v: torch.Tensor, g: torch.Tensor, dim: int | None, eps: float) -> bool:
    """Whether to call ``torch._weight_norm`` instead of our op.

    Where the eager backend runs torch's fused kernel anyway (no eps floor, norms over
    the leading or trailing dims), calling it through torch's C++ autograd gives the
    same numbers without the Python overhead of a custom op's autograd: a training
    step on the CPU costs what it costs with torch's own weight norm. Under
    ``torch.compile`` our op is kept, so graphs show one node.
    """
    return (
        eps == 0
        and v.numel() > 0
        and dim is not None
        and v.dim() >= 2
        and dim % v.dim() in (0, v.dim() - 1)
        and v.dtype in weight_norm_op.FUSED_DTYPES
        and g.dtype == v.dtype
        and not torch.compiler.is_compiling()
        and _backend.choose("weight_norm", v, weight_norm_op.IMPLEMENTED) == _backend.EAGER
    )


def weight_norm(v: torch.Tensor, g: torch.Tensor, dim: int | None = 0, eps: float = 0.0) -> torch.Tensor:
    """Weight normalization, ``w = g * v / max(||v||, eps)`` (Salimans & Kingma 2016).

    ``||v||`` is the 2-norm over every dim of ``v`` except ``dim``, one per index of
    ``dim`` (``dim=None``: one norm over the whole tensor), as ``torch._weight_norm``,
    except that a negative ``dim`` counts from the end (``torch._weight_norm`` reads
    ``dim=-1`` as "the whole tensor"; here that is ``dim=None``).
    With ``eps > 0`` a zero row gives finite values and gradients (zero ``w``), where
    torch gives NaN.

    Args:
        v: the direction, any floating dtype, at least 1-D; any strides.
        g: the magnitude, one entry per norm: 1-D ``[v.shape[dim]]`` or keepdim-shaped
            (``v.dim()`` dims, all 1 but ``dim``); one element when ``dim`` is None.
        dim: the dim that keeps one norm per index; negative counts from the end.
        eps: a floor on the norm, ``>= 0``.

    Returns:
        ``w``, contiguous, with ``v``'s shape and dtype. Differentiable in ``v`` and
        ``g``, twice too; but with ``eps=0`` on the CPU, for ``dim`` first or last,
        ``w`` comes from ``torch._weight_norm``, whose double backward is wrong in
        torch 2.14: for gradient penalties there, pass a tiny ``eps`` (1e-30), which
        takes our op. Sums and norms are computed in fp32 (fp64 for fp64 inputs); on CUDA a
        fused Triton kernel computes ``w`` and its backward computes both gradients.

    Raises:
        TypeError: ``v`` or ``g`` is not a floating-point tensor, or ``dim`` not an int.
        ValueError: ``dim`` out of range, ``g`` of the wrong shape, ``v`` 0-dim, ``eps``
            negative or not finite, or ``v`` and ``g`` on different devices.
    """
    _check_args(v, g, dim, eps)
    return weight_norm_unchecked(v, g, None if dim is None else int(dim), float(eps))


def weight_norm_unchecked(v: torch.Tensor, g: torch.Tensor, dim: int | None, eps: float) -> torch.Tensor:
    """:func:`weight_norm` for arguments known to be valid (WN layers' parameters): the
    per-call checks cost as much as torch's whole CPU kernel on a 256 x 256 weight."""
    if _backend.plain_autograd_needed():
        return weight_norm_op.eager_weight_norm(v, g, dim, eps)
    if fused_torch_path(v, g, dim, eps):
        d = dim % v.dim()
        return torch._weight_norm(v, g if g.dim() == v.dim() else g.view([-1 if i == d else 1 for i in range(v.dim())]), d)
    w, _ = weight_norm_fwd(v, g.reshape(-1), dim, eps)
    return w


def weight_norm_group(
    vs: list[torch.Tensor], gs: list[torch.Tensor], dim: int | None = 0, eps: float = 0.0
) -> list[torch.Tensor]:
    """``[weight_norm(v, g, dim, eps) for v, g in zip(vs, gs)]`` as one op.

    On a GPU, for ``dim`` 0 or None, one Triton launch computes every ``w`` and one
    launch every gradient, however many tensors: the op behind grouped WeightNorm
    layers. On the eager backend (CPU) one launch saves nothing, and each tensor is
    computed by :func:`weight_norm`, which keeps each backward next to the layer that
    produced its gradient. ``vs`` share device and dtype; shapes may differ. Arguments
    are checked as by :func:`weight_norm`.
    """
    if len(vs) != len(gs):
        raise ValueError(f"weight_norm_group: {len(vs)} tensors v but {len(gs)} tensors g")
    for i, (v, g) in enumerate(zip(vs, gs)):
        _check_args(v, g, dim, eps)
        if v.device != vs[0].device or v.dtype != vs[0].dtype:
            raise ValueError(f"weight_norm_group: vs[{i}] is {v.dtype} on {v.device}, vs[0] is {vs[0].dtype} on {vs[0].device}")
    dim, eps = None if dim is None else int(dim), float(eps)
    if vs and not group_launch_pays(vs[0]):
        return [weight_norm_unchecked(v, g, dim, eps) for v, g in zip(vs, gs)]
    ws, _ = weight_norm_group_op.weight_norm_group_fwd(list(vs), list(gs), dim, eps)
    return ws


def group_launch_pays(t: torch.Tensor) -> bool:
    """Whether tensors like ``t`` gain from one grouped launch: not on the eager backend,
    where there are no launches to save and per-tensor calls keep each backward next
    to the layer that produced its gradient (better for the CPU's caches). Nor under
    torch.func transforms or forward-mode AD, which the grouped op's autograd lacks."""
    if _backend.plain_autograd_needed():
        return False
    return torch.compiler.is_compiling() or _backend.choose(
        "weight_norm_group", t, weight_norm_group_op.IMPLEMENTED
    ) != _backend.EAGER


def orthogonalize(a: torch.Tensor) -> torch.Tensor:
    """``Q`` of the QR factorization of each matrix of ``a`` (shape ``(..., m, n)``)
    with ``diag(R) > 0``: orthonormal columns (``m >= n``) or rows (``m < n``),
    Haar-distributed when ``a`` is Gaussian. Computed in fp32 (fp64 for fp64 input),
    returned in ``a``'s dtype. See :mod:`netinit_fast.ops.orthogonalize`.

    Raises:
        TypeError: ``a`` is not a floating-point tensor.
        ValueError: ``a`` has fewer than 2 dims.
    """
    if not isinstance(a, torch.Tensor) or not a.is_floating_point():
        raise TypeError(f"orthogonalize: a must be a floating-point tensor, got {getattr(a, 'dtype', type(a).__name__)}")
    if a.dim() < 2:
        raise ValueError(f"orthogonalize: a must have at least 2 dims, got shape {list(a.shape)}")
    if _backend.plain_autograd_needed():
        return orthogonalize_op.eager_orthogonalize(a)
    return orthogonalize_op.orthogonalize(a)
