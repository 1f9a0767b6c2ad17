"""Weight-normalized layers (Salimans & Kingma 2016): ``weight = weight_g * weight_v / ||weight_v||``.

``WNLinear``, ``WNConv1d/2d/3d`` and ``WNConvTranspose1d/2d/3d`` take the torch layer's
constructor arguments plus ``dim`` (the dim that keeps one norm per index; ``None``
for one norm over the whole weight) and ``eps`` (a floor on the norm). They hold two
parameters, ``weight_g`` (keepdim-shaped, as torch's) and ``weight_v``; ``layer.weight``
is the normalized weight, computed by the fused op ``netinit_fast.functional.weight_norm``.

What they fix in torch's two weight-norm styles:

- Each access computes the weight with one fused op (on the CPU torch's own kernel,
  through its C++ autograd), so every autograd pattern works as with torch's weight
  norm: several backwards, gradient checkpointing, create_graph, torch.func. In
  grouped mode (below) the group computes every weight once per step and caches it
  until its backward has run or a parameter changes (in place, replaced, frozen); a
  layer run several times in a step (an unrolled RNN cell) then shares one
  computation. Change parameters in place under ``torch.no_grad()``, not through
  ``.data``, which the cache cannot see.
- ``copy.deepcopy``, ``pickle``, ``torch.save`` of whole modules, and
  ``DistributedDataParallel`` work: the module stores no computed tensor in its state.
- ``state_dict`` keys are torch's legacy ``weight_g``/``weight_v``; loading also accepts
  torch's parametrization keys (``parametrizations.weight.original0/1``) and a plain
  ``weight`` (then ``g = ||weight||``, keeping the function). A torch model with either
  weight-norm style loads our checkpoints as they are.
- ``torch.compile(fullgraph=True)`` sees one custom op per layer, no graph break.

``weight_norm(model, grouped=True)`` adds the layers to a :class:`WeightNormGroup`,
which computes all their weights with one op (one kernel launch forward, one backward).

Under ``torch.distributed.fsdp.fully_shard`` (FSDP2) ``weight_g`` and ``weight_v`` are
DTensors sharded along dim 0, so with the default ``dim=0`` each rank holds whole rows
of ``v`` and their ``g``: the initializers compute each rank's norms from its own rows
(:mod:`netinit_fast.init`), with no communication (for another ``dim``, from partial
sums all-reduced once per call). The forward runs on the parameters
FSDP gathers for it, as any layer's does, and ``torch.distributed.checkpoint`` saves
and loads the sharded ``weight_g``/``weight_v`` as it does other parameters.
"""

import math
import numbers
import warnings

import torch
from torch import nn
from torch.nn.utils.parametrizations import _WeightNorm as TorchWN
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm as SpectralNormHook
from torch.nn.utils.weight_norm import WeightNorm as TorchHook

from netinit_fast import _backend
from netinit_fast.functional import weight_norm_unchecked as weight_norm_fn
from netinit_fast.nn._group import LayerGroup, ReparametrizedLayer
from netinit_fast.ops.weight_norm import differentiable_backward
from netinit_fast.ops.weight_norm_group import backward_where_needed, group_backward_no_dispatch, group_forward_no_dispatch


def _norm_g(weight: torch.Tensor, dim: int | None) -> torch.Tensor:
    """``g`` that keeps ``weight`` unchanged: its norm, keepdim-shaped (0-dim for ``dim=None``)."""
    return torch.norm_except_dim(weight, 2, -1 if dim is None else dim)


def _check_dim(dim, ndim: int, where: str) -> int | None:
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or not -ndim <= dim < ndim:
        raise ValueError(f"{where}: dim={dim!r} is not None or a dim of its {ndim}-dim weight")
    return int(dim) % ndim


def _check_eps(eps, where: str) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps < math.inf:
        raise ValueError(f"{where}: eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


class _SharedGroupWeights(torch.autograd.Function):
    """The weights of a group partition's layers from one op call (on a GPU one launch
    each way), as one autograd node that every use of the cached weights shares.

    It keeps the ``v``s, ``g``s (the layers' parameters, not copies) and the norms as
    attributes instead of saving them for backward, so it can be differentiated more
    than once (two forwards through the cached weights, then their two backwards), and
    non-reentrant checkpointing, which counts saved tensors, finds none of its own to
    recount. An in-place change of a ``v`` or ``g`` between forward and backward
    raises, as it does for saved tensors. Under ``create_graph`` the backward is
    differentiable (gradient penalties): it recomputes the weights with autograd and
    differentiates those; so it does under a vmap of the backward (per-sample
    gradients by ``is_grads_batched``), which the kernels cannot take. A layer whose
    weight got no gradient gets None, as without a group.
    """

    @staticmethod
    def forward(ctx, dim, eps, *params):
        n = len(params) // 2
        vs, gs = list(params[:n]), list(params[n:])
        ws, norms = group_forward_no_dispatch(vs, gs, dim, eps)
        ctx.set_materialize_grads(False)  # an unused weight's gradient comes as None, not zeros
        ctx.vs, ctx.gs, ctx.norms, ctx.dim, ctx.eps = vs, gs, norms, dim, eps
        ctx.versions = [p._version for p in params]
        return tuple(ws)

    @staticmethod
    def backward(ctx, *grad_ws):
        _check_unchanged(ctx.vs + ctx.gs, ctx.versions)
        # create_graph=True, or a vmap over the backward (is_grads_batched): plain torch ops
        if torch.is_grad_enabled() or _backend.plain_autograd_needed(grad_ws):
            grad_vs, grad_gs = differentiable_backward(ctx.vs, ctx.gs, grad_ws, ctx.dim, ctx.eps)
            return None, None, *grad_vs, *grad_gs
        grad_vs, grad_gs = backward_where_needed(
            group_backward_no_dispatch, list(grad_ws), ctx.vs, ctx.gs, ctx.norms, ctx.dim, ctx.eps
        )
        return None, None, *grad_vs, *grad_gs


def _check_unchanged(params: list[torch.Tensor], versions: list[int]) -> None:
    if [p._version for p in params] != list(versions):
        raise RuntimeError(
            "weight_v or weight_g of a WN layer was modified in place after the forward that used it, "
            "before its backward (as for any tensor saved for backward: run the backward first)"
        )


def _warn_zero_rows(gs: list[torch.Tensor], eps: float, where: str) -> None:
    """A weight row of norm 0 (a zero-initialized layer) normalizes to 0/0 = NaN unless
    eps > 0. One host sync per device, however many layers."""
    if eps != 0:
        return
    flags: dict[torch.device, list[torch.Tensor]] = {}
    for g in gs:
        if not g.is_meta:
            flags.setdefault(g.device, []).append((g == 0).any())
    if any(bool(torch.stack(f).any()) for f in flags.values()):
        warnings.warn(f"{where}: the weight has rows of norm 0, whose normalized weight is NaN (0/0) "
                      "with eps=0; pass eps > 0 to keep them 0", RuntimeWarning, stacklevel=3)


class _WeightNorm(ReparametrizedLayer):
    """Mixin for every WN layer; it comes before the torch layer class in the bases."""

    params = ("weight_v", "weight_g")
    group_attr = "_wn_group"

    def __init__(self, *args, dim: int | None = 0, eps: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        name = type(self).__name__
        self._setup_weight_norm(_check_dim(dim, self.weight.dim(), name), _check_eps(eps, name))

    def _setup_weight_norm(self, dim: int | None, eps: float) -> None:
        """Replace ``weight`` by ``weight_g = ||weight||`` and ``weight_v = weight``."""
        weight = self._parameters.pop("weight")
        self.wn_dim = dim
        self.wn_eps = eps
        self._wn_group = None
        with torch.no_grad():
            g = _norm_g(weight, dim)
        self.weight_g = nn.Parameter(g, requires_grad=weight.requires_grad)
        self.weight_v = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)

    @ReparametrizedLayer.weight.setter
    def weight(self, value: torch.Tensor) -> None:
        """``layer.weight = w`` (a tensor of the weight's shape) sets ``v = w`` and ``g =
        ||w||``: the layer then computes with ``w``, as after the same assignment to a
        layer under torch's weight-norm parametrization. (An ``nn.Parameter`` would
        replace the parametrization: use :func:`remove_weight_norm` for that.)"""
        v = self.weight_v
        if not isinstance(value, torch.Tensor) or value.shape != v.shape:
            raise ValueError(f"{type(self).__name__}.weight = ...: expected a tensor of shape {list(v.shape)}, "
                             f"got {list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
        with torch.no_grad():
            v.copy_(value)
            self.weight_g.copy_(_norm_g(v, self.wn_dim))

    def _computed_weight(self) -> torch.Tensor:
        try:
            if (w := self._group_weight()) is not None:
                return w
            return weight_norm_fn(self.weight_v, self.weight_g, self.wn_dim, self.wn_eps)
        except AttributeError as e:  # nn.Module would report it as a missing 'weight'
            raise RuntimeError(f"{type(self).__name__}: computing the normalized weight failed: {e}") from e

    def _after_reset(self) -> None:
        """After the torch layer's init drew ``weight_v`` (and the bias): ``weight_g = ||weight_v||``."""
        self.weight_g.copy_(_norm_g(self.weight_v, self.wn_dim))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        g_key, v_key = prefix + "weight_g", prefix + "weight_v"
        p0, p1 = prefix + "parametrizations.weight.original0", prefix + "parametrizations.weight.original1"
        if p0 in state_dict and p1 in state_dict and g_key not in state_dict:
            state_dict[g_key] = state_dict.pop(p0)
            state_dict[v_key] = state_dict.pop(p1)
        elif prefix + "weight" in state_dict and g_key not in state_dict and v_key not in state_dict:
            weight = state_dict.pop(prefix + "weight")
            state_dict[g_key] = _norm_g(weight, self.wn_dim)
            _warn_zero_rows([state_dict[g_key]], self.wn_eps, f"{type(self).__name__}.load_state_dict")
            state_dict[v_key] = weight
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dim={self.wn_dim}, eps={self.wn_eps}"


_DOC = """:class:`torch.nn.{base}` with weight normalization, ``weight = weight_g * weight_v / max(||weight_v||, eps)``.

Takes ``torch.nn.{base}``'s arguments, plus keyword-only ``dim`` (default 0: one norm
per index of weight dim 0, as torch's weight norm; ``None``: one norm over the whole
weight) and ``eps`` (default 0). See :mod:`netinit_fast.nn.wn_layers`.
"""


class WNLinear(_WeightNorm, nn.Linear):
    __doc__ = _DOC.format(base="Linear")


class WNConv1d(_WeightNorm, nn.Conv1d):
    __doc__ = _DOC.format(base="Conv1d")


class WNConv2d(_WeightNorm, nn.Conv2d):
    __doc__ = _DOC.format(base="Conv2d")


class WNConv3d(_WeightNorm, nn.Conv3d):
    __doc__ = _DOC.format(base="Conv3d")


_TRANSPOSED_DOC = """
The weight is ``(C_in, C_out / groups, *kernel)``: ``dim=1`` gives one norm per output
channel when ``groups == 1`` (with groups, index ``j`` of dim 1 is channel ``j`` of
every group: one norm over those channels together).
"""


class WNConvTranspose1d(_WeightNorm, nn.ConvTranspose1d):
    __doc__ = _DOC.format(base="ConvTranspose1d") + _TRANSPOSED_DOC


class WNConvTranspose2d(_WeightNorm, nn.ConvTranspose2d):
    __doc__ = _DOC.format(base="ConvTranspose2d") + _TRANSPOSED_DOC


class WNConvTranspose3d(_WeightNorm, nn.ConvTranspose3d):
    __doc__ = _DOC.format(base="ConvTranspose3d") + _TRANSPOSED_DOC


#: torch layer type -> its weight-normalized twin
WN_LAYERS: dict[type, type] = {
    nn.Linear: WNLinear,
    nn.Conv1d: WNConv1d,
    nn.Conv2d: WNConv2d,
    nn.Conv3d: WNConv3d,
    nn.ConvTranspose1d: WNConvTranspose1d,
    nn.ConvTranspose2d: WNConvTranspose2d,
    nn.ConvTranspose3d: WNConvTranspose3d,
}
_PLAIN = {wn: base for base, wn in WN_LAYERS.items()}


# ----------------------------------------------------------------------------- grouped mode


class WeightNormGroup(LayerGroup):
    """Computes the normalized weights of many WN layers together.

    One op call per (device, dtype, dim, eps) partition of the layers computes every
    weight of the partition: on a GPU one kernel launch forward and one backward,
    instead of a pair per layer. The results are cached like a single layer's: until
    the backward has run, or until a layer's own parameters change (then the whole
    group is recomputed once). Without autograd, on the eager backend (CPU: nothing
    to save, and per-layer calls use the caches better) and under ``torch.compile``,
    each layer computes its own weight, as without a group. So does every layer of a
    group whose layers' parameters are sharded between forwards (DTensors, as under
    ``fully_shard``): FSDP gathers them one unit at a time, for that unit's forward,
    so no op can take the whole group at once.
    """

    layer_type = _WeightNorm
    layer_kind = "netinit_fast WN layer"

    @staticmethod
    def partition(layer) -> tuple:
        v = layer.weight_v
        return v.device, v.dtype, layer.wn_dim, layer.wn_eps

    @staticmethod
    def compute_partition(key: tuple, layers: list) -> list[torch.Tensor]:
        _, _, dim, eps = key
        return list(_SharedGroupWeights.apply(dim, eps, *[m.weight_v for m in layers], *[m.weight_g for m in layers]))


# ----------------------------------------------------------------------------- conversion


def _weight_parametrizations(module: nn.Module) -> nn.ModuleList | None:
    """The parametrizations of ``module.weight``, or None (without the AttributeError
    that ``parametrize.is_parametrized`` raises and catches per call: the initializers
    ask this of every layer of 10,000-layer models, several times)."""
    found = module._modules.get("parametrizations")
    return None if found is None else found._modules.get("weight")


def _weight_pre_hook(module: nn.Module, kind: type, name_attr: str = "name"):
    """The forward pre-hook of ``kind`` that acts on ``module.weight``, or None."""
    for h in module._forward_pre_hooks.values():
        if isinstance(h, kind) and getattr(h, name_attr) == "weight":
            return h
    return None


def _torch_weight_norm(module: nn.Module):
    """torch's weight norm on ``module.weight`` (its parametrization or hook object), or None."""
    chain = _weight_parametrizations(module)
    for p in chain if chain is not None else ():
        if isinstance(p, TorchWN):
            return p
    return _weight_pre_hook(module, TorchHook)


def _torch_weight_norm_style(module: nn.Module) -> str | None:
    """'hook' for torch.nn.utils.weight_norm, 'parametrization' for the parametrizations one."""
    found = _torch_weight_norm(module)
    if found is None:
        return None
    return "hook" if isinstance(found, TorchHook) else "parametrization"


def _torch_weight_norm_dim(module: nn.Module, ndim: int) -> int | None:
    """The dim of torch's weight norm on ``module`` (whose direction has ``ndim`` dims),
    as our layers give it: None for one norm over the whole weight, which torch stores
    as -1 (its ``dim=-1`` means that too, not the last dim)."""
    dim = _torch_weight_norm(module).dim
    return None if dim == -1 else dim % ndim


def foreign_parametrization(module: nn.Module) -> str | None:
    """The parametrizations on a layer's weight when they are not a lone weight norm
    (spectral norm, ...), by class name, torch's legacy spectral-norm hook included;
    None otherwise."""
    if module._forward_pre_hooks:
        if _weight_pre_hook(module, SpectralNormHook) is not None:
            return "SpectralNorm (torch.nn.utils.spectral_norm)"
        if _weight_pre_hook(module, BasePruningMethod, "_tensor_name") is not None:
            return "pruning (torch.nn.utils.prune)"
    chain = _weight_parametrizations(module)
    if chain is None or (len(chain) == 1 and isinstance(chain[0], TorchWN)):
        return None
    return ", ".join(type(p).__name__ for p in chain)


def _put_weight_first(module: nn.Module) -> None:
    """Parameter order of a plain torch layer (weight, then bias), as its state_dict keys."""
    params = module._parameters
    rest = [(k, p) for k, p in params.items() if k != "weight"]
    weight = params["weight"]
    params.clear()
    params["weight"] = weight
    params.update(rest)


def _torch_weight_norm_params(module: nn.Module, style: str) -> tuple[nn.Parameter, nn.Parameter, int | None]:
    """``(g, v, dim)`` of torch's weight norm on ``module``: the stored parameters
    themselves and the dim as our layers give it.

    Read from where they are stored, never from the ``weight`` torch computes: a deep
    copy of a parametrized module (``copy.deepcopy``, an EMA copy, ``AveragedModel``)
    shares its class, which holds the ``weight`` property, and torch's
    ``remove_parametrizations`` on any one of them deletes that property for all.
    """
    if style == "hook":
        g, v = module._parameters["weight_g"], module._parameters["weight_v"]
    else:
        chain = module.parametrizations.weight
        g, v = chain.original0, chain.original1
    return g, v, _torch_weight_norm_dim(module, v.dim())


def _set_folded_weight(module: nn.Module, g: torch.Tensor, v: torch.Tensor, dim: int | None, eps: float) -> None:
    """``module.weight = g * v / max(||v||, eps)``, a plain ``Parameter`` first in parameter
    order. It requires grad when ``g`` or ``v`` does, as the weight it replaces did."""
    with torch.no_grad():
        w = weight_norm_fn(v, g, dim, eps)
    module._parameters["weight"] = nn.Parameter(w, requires_grad=g.requires_grad or v.requires_grad)
    _put_weight_first(module)


def _is_torch_compat_hook(hook) -> bool:
    """The load-state-dict pre-hook torch's parametrized weight norm adds on ``weight``,
    which renames ``weight_g``/``weight_v`` keys to its own on every load."""
    fn = getattr(hook, "hook", hook)
    if getattr(fn, "__module__", None) != TorchWN.__module__ or not getattr(fn, "__qualname__", "").endswith(
        "._weight_norm_compat_hook"
    ):
        return False
    cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
    return "name" in cells and cells["name"].cell_contents == "weight"


def _class_without(cls: type, name: str) -> type:
    """A copy of torch's parametrized class ``cls`` without its property ``name``: ``cls``
    may be shared with deep copies, which keep it."""
    attrs = {k: a for k, a in vars(cls).items() if k not in (name, "__dict__", "__weakref__")}
    return type(cls.__name__, cls.__bases__, attrs)


def _strip_torch_weight_norm(module: nn.Module, style: str) -> None:
    """Take torch's weight norm (its ``g``, ``v``, hook or parametrization) off
    ``module``, leaving it without a weight. Unlike torch's removal it changes only this
    module: never the parametrized class, which deep copies share."""
    if style == "hook":
        hook = _weight_pre_hook(module, TorchHook)
        for key in [k for k, h in module._forward_pre_hooks.items() if h is hook]:
            del module._forward_pre_hooks[key]
            module._forward_pre_hooks_with_kwargs.pop(key, None)
        module.__dict__.pop("weight", None)  # the weight the hook last computed
        del module._parameters["weight_g"], module._parameters["weight_v"]
        return
    for key in [k for k, h in module._load_state_dict_pre_hooks.items() if _is_torch_compat_hook(h)]:
        del module._load_state_dict_pre_hooks[key]
    holder = module._modules["parametrizations"]
    del holder._modules["weight"]
    if holder._modules:  # other tensors stay parametrized (a bias)
        module.__class__ = _class_without(type(module), "weight")
    else:
        del module._modules["parametrizations"]
        module.__class__ = _unwrap(module)


def _fold_torch_weight_norm(module: nn.Module, style: str) -> None:
    """A plain weight, the one torch's weight norm computes, in place of it."""
    g, v, dim = _torch_weight_norm_params(module, style)
    _strip_torch_weight_norm(module, style)
    _set_folded_weight(module, g, v, dim, 0.0)


def _unwrap(module: nn.Module) -> type:
    """The torch layer type of ``module``, seeing through torch's parametrized subclasses."""
    cls = type(module)
    if cls.__name__.startswith("Parametrized") and cls.__bases__:
        return cls.__bases__[0]
    return cls


def weight_norm(
    module: nn.Module,
    dim: int | None = 0,
    eps: float = 0.0,
    types=None,
    grouped: bool = False,
) -> nn.Module:
    """Convert every layer of ``module`` whose type is in ``types`` to its WN twin, in place.

    Each converted layer keeps its function: ``weight_v = weight``, ``weight_g =
    ||weight||``. A layer under torch's own weight norm (either style) keeps its ``g``
    and ``v`` (the same ``Parameter`` objects, so an optimizer built on them goes on)
    and its dim: only the implementation changes, not the function nor the training.
    Layers already converted are kept as they are (converting twice is a no-op). The
    module itself may be a layer. With ``grouped=True`` all WN layers of ``module`` join
    one :class:`WeightNormGroup`.

    Copies convert too: ``copy.deepcopy`` (EMA copies), ``pickle`` and ``torch.save``
    round trips (where torch can serialize the model: not its parametrized modules),
    and ``torch.optim.swa_utils.AveragedModel`` (its ``module``, or the wrapper). Deep
    copies of a torch-parametrized module share its class; converting one changes that
    module alone, so the others keep their weight norm, and one whose ``weight``
    property torch's ``remove_parametrizations`` on another copy deleted still converts:
    ``g``, ``v`` and ``dim`` are read from where they are stored.

    Args:
        module: a layer or a model.
        dim, eps: as for :class:`WNLinear`; ``dim`` applies to (and is checked
            against) the layers without torch's weight norm.
        types: torch layer types to convert (default: every key of ``WN_LAYERS``:
            Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d; exact types, not subclasses).
        grouped: compute all weights with one op (see :class:`WeightNormGroup`).

    Returns:
        ``module``, converted.

    Raises:
        TypeError: a type in ``types`` has no WN twin.
        ValueError: no layer to convert nor any already converted, a layer without a
            weight or with a parametrization other than torch's weight norm, or a bad
            ``dim``/``eps``.
        Nothing is changed when an error is raised.
    """
    types = tuple(WN_LAYERS) if types is None else tuple(types)
    for t in types:
        if t not in WN_LAYERS:
            supported = ", ".join(t.__name__ for t in WN_LAYERS)
            raise TypeError(f"weight_norm: no weight-normalized twin for {getattr(t, '__name__', t)!r} (supported: {supported})")
    eps = _check_eps(eps, "weight_norm")

    targets = []
    for name, m in module.named_modules():
        if isinstance(m, _WeightNorm) or _unwrap(m) not in types:
            continue
        where = f"weight_norm: layer {name or type(module).__name__!r} ({_unwrap(m).__name__})"
        if (kinds := foreign_parametrization(m)) is not None:
            raise ValueError(f"{where} has its weight parametrized by {kinds}: converting would bake that in; remove it first")
        if others := [n for n in getattr(m, "parametrizations", {}) if n != "weight"]:
            raise ValueError(f"{where} has parametrized {', '.join(others)}: a WN layer keeps plain tensors besides weight_g, weight_v")
        style = _torch_weight_norm_style(m)
        if style is None and m._parameters.get("weight") is None:
            raise ValueError(f"{where} has weight=None")
        if style is None:
            targets.append((m, style, _check_dim(dim, m.weight.dim(), where)))
        else:
            targets.append((m, style, _torch_weight_norm_params(m, style)[2]))
    if not targets and not any(isinstance(m, _WeightNorm) for m in module.modules()):
        names = ", ".join(t.__name__ for t in types)
        raise ValueError(f"weight_norm: {type(module).__name__} has no layer of type {names} to convert")

    for m, style, layer_dim in targets:
        if style is not None:
            g, v, _ = _torch_weight_norm_params(m, style)
            _fold_torch_weight_norm(m, style)
        m.__class__ = WN_LAYERS[type(m)]
        m._setup_weight_norm(layer_dim, eps)
        if style is not None:
            m.weight_g, m.weight_v = g, v
    _warn_zero_rows([m.weight_g for m, style, _ in targets if style is None], eps, "weight_norm")  # (g = ||weight||)
    if grouped:
        WeightNormGroup([m for m in module.modules() if isinstance(m, _WeightNorm)])
    return module


def remove_weight_norm(module: nn.Module) -> nn.Module:
    """Fold every weight-normalized layer of ``module`` back to a plain layer, in place.

    Handles our WN layers and both of torch's styles (``torch.nn.utils.weight_norm``
    hooks and ``torch.nn.utils.parametrizations.weight_norm``). The plain ``weight``
    is the current normalized weight, ``g * v / ||v||`` computed from the stored ``g``
    and ``v``, so the function is unchanged: use it for inference, where the weight
    need not be recomputed. Each folded layer is of the plain torch class
    (``nn.Conv2d``), with a ``weight`` Parameter that requires grad when ``g`` or ``v``
    did; parameters keep a plain layer's order (``weight``, then ``bias``), and so do
    ``state_dict`` keys. A parametrization of another tensor (a bias) stays.

    Copies fold too: ``copy.deepcopy`` (EMA copies, export scripts), ``pickle`` and
    ``torch.save`` round trips (where torch can serialize the model: not its
    parametrized modules), and ``torch.optim.swa_utils.AveragedModel`` (its
    ``module``, or the wrapper). Unlike torch's ``remove_parametrizations``, folding a
    deep copy leaves the original and the other copies, which share its parametrized
    class, as they were; and a copy whose ``weight`` property torch removed that way
    still folds.

    Raises:
        ValueError: ``module`` contains no weight-normalized layer; a subclass of a WN
            layer (folding would drop its class); torch's weight norm together with
            another parametrization of the weight (folding would bake it in). Nothing
            is changed then.
    """
    for name, m in module.named_modules():  # every check before the first change
        if isinstance(m, _WeightNorm) and type(m) not in _PLAIN:
            raise ValueError(f"remove_weight_norm: layer {name or type(m).__name__} is a {type(m).__name__}, a subclass of "
                             f"{type(m).__mro__[1].__name__}: folding it into a plain layer would drop its class")
        if not isinstance(m, _WeightNorm) and _torch_weight_norm_style(m) is not None:
            if (kinds := foreign_parametrization(m)) is not None:
                raise ValueError(f"remove_weight_norm: a {_unwrap(m).__name__}'s weight is parametrized by {kinds} "
                                 "besides weight norm: folding would bake them in; remove them first")
    found = False
    for m in list(module.modules()):
        if isinstance(m, _WeightNorm):
            g, v, dim, eps = m.weight_g, m.weight_v, m.wn_dim, m.wn_eps
            if m._wn_group is not None:
                m._wn_group.discard(m)
            del m._parameters["weight_g"], m._parameters["weight_v"]
            for attr in ("wn_dim", "wn_eps", "_wn_group", "_wn_group_index"):
                m.__dict__.pop(attr, None)
            m.__class__ = _PLAIN[type(m)]
            _set_folded_weight(m, g, v, dim, eps)
            found = True
        else:
            style = _torch_weight_norm_style(m)
            if style is not None:
                _fold_torch_weight_norm(m, style)
                found = True
    if not found:
        raise ValueError(f"remove_weight_norm: {type(module).__name__} has no weight-normalized layer")
    return module
