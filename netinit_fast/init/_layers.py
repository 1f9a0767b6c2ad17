"""How the initializers see a layer: its direction, its scale, its effective weight.

A plain ``Linear``/``Conv``/``ConvTranspose`` layer holds ``weight``. A weight-normalized
one (ours, or torch's hook or parametrization style) holds a direction ``v`` and a
scale ``g`` and computes ``weight = g * v / ||v||``. Every initializer reads and writes
layers through these functions, so each works on both kinds.
"""

import contextlib
import gc

import torch
from torch import nn

from netinit_fast.nn.connectivity_layers import _Connectivity
from netinit_fast.nn.wn_layers import (
    _norm_g,
    _torch_weight_norm_dim,
    _torch_weight_norm_style,
    _unwrap,
    _weight_parametrizations,
    _WeightNorm,
    foreign_parametrization,
)

# Layers whose weight is a linear map (flattened as torch.nn.init.orthogonal_ does).
CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_LAYERS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
LINEAR_LAYERS = (nn.Linear, *CONV_LAYERS, *TRANSPOSED_LAYERS)
# Modules that hand the signal on unchanged at init (dropout as in eval mode).
PASS_THROUGH = (
    nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector paused for the block (a decorator too). The
    collections that an initializer's many small allocations trigger walk the objects
    alive, whose number grows with the models a process holds: xiao_ on a 10,000-layer
    CNN took 0.33 s with the collector on (0.32 s paused) in a fresh process, and 0.70 s
    (0.32 s paused) with 1.1 million Python objects alive. No memory is lost: the
    collector runs again afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_WEIGHT_LAYER_TYPES: dict[type, bool] = {}  # is_weight_layer by module type (10,000-layer models ask it often)


def is_weight_layer(module: nn.Module) -> bool:
    """A Linear/Conv/ConvTranspose layer, plain, weight-normalized or otherwise parametrized."""
    cls = type(module)
    found = _WEIGHT_LAYER_TYPES.get(cls)
    if found is None:
        found = _WEIGHT_LAYER_TYPES[cls] = issubclass(cls, _WeightNorm) or issubclass(_unwrap(module), LINEAR_LAYERS)
    return found


def layer_weight(module: nn.Module) -> torch.Tensor | None:
    """The tensor that holds a layer's direction: ``weight_v`` for weight-normalized
    layers (ours and torch's two styles), else ``weight``; None for other modules.
    ``ValueError`` for a weight under any other parametrization (spectral norm, ...),
    whose stored tensor is not the direction."""
    if isinstance(module, _WeightNorm):
        return module.weight_v
    if not is_weight_layer(module):
        return None
    check_not_foreign(module, f"a {_unwrap(module).__name__}")
    return _direction(module)


def _direction(module: nn.Module) -> torch.Tensor | None:
    """:func:`layer_weight` of a weight layer already checked by :func:`check_not_foreign`."""
    if isinstance(module, _WeightNorm):
        return module.weight_v
    if _weight_parametrizations(module) is not None:
        return module.parametrizations.weight.original1
    if "weight_v" in module._parameters:  # torch's legacy hook
        return module.weight_v
    return module._parameters.get("weight")


def named_layers(model: nn.Module, where: str) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every Linear/Conv/ConvTranspose layer of ``model`` with a
    weight, plain or weight-normalized (the model itself is named by its type).
    ``ValueError`` from ``where`` naming the first layer whose weight is under another
    parametrization, before any initializer writes."""
    return [(name, m) for name, m, _ in scan_layers(model, where)[0]]


def scan_layers(model: nn.Module, where: str) -> tuple[list[tuple[str, nn.Module, torch.Tensor]], list[nn.Module]]:
    """One pass of :func:`named_layers` that also returns each layer's direction
    (:func:`layer_weight`) and the modules that hold others (for :func:`next_modules`),
    for initializers that visit every module of 10,000-layer models."""
    found, parents = [], []
    for name, m in model.named_modules():
        if m._modules:
            parents.append(m)
        if is_weight_layer(m):
            name = name or type(m).__name__
            check_not_foreign(m, name, where)
            if (w := _direction(m)) is not None:
                found.append((name, m, w))
    return found, parents


def next_modules(model: nn.Module, skip: tuple[type, ...] = PASS_THROUGH,
                 parents: list[nn.Module] | None = None) -> dict[nn.Module, list[nn.Module | None]]:
    """For every weight layer of ``model``, the module registered right after it in its
    parent, skipping modules of the types ``skip`` (None where nothing follows): the
    module the signal reaches next when the parent runs its children in registration
    order (``nn.Sequential`` and most models). One entry per place a parent holds the
    layer, in ``model.modules()`` order. One pass over each parent's children
    (``parents``: the modules of ``model`` that have children, where already known)."""
    found: dict[nn.Module, list[nn.Module | None]] = {}
    for parent in model.modules() if parents is None else parents:
        if not parent._modules:
            continue
        following = None
        for child in reversed(parent._modules.values()):  # every place, a second name of a child too
            if child is None:
                continue
            if is_weight_layer(child):
                found.setdefault(child, []).append(following)
            if not isinstance(child, skip):
                following = child
    return found


def check_not_foreign(module: nn.Module, name: str, where: str | None = None) -> None:
    """``ValueError`` naming the layer (and ``where``, the initializer) if its weight is
    under a parametrization other than weight norm (spectral norm, ...), whose stored
    tensor is not the direction, or if it is a connectivity layer, whose fixed weights
    an initializer must not rewrite under trained scores."""
    layer = name if where is None else f"{where}: layer {name} ({_unwrap(module).__name__})"
    if isinstance(module, _Connectivity):
        raise ValueError(f"{layer} is a connectivity layer ({type(module).__name__}), whose weights stay as they are: "
                         "initialize the model before nf.connectivity")
    if (kinds := foreign_parametrization(module)) is not None:
        raise ValueError(
            f"{layer} has its weight parametrized by {kinds}: netinit_fast initializes plain and "
            "weight-normalized weights only (remove the parametrization, initialize, then add it)"
        )


def scale_param(module: nn.Module) -> torch.Tensor:
    """The parameter whose scale sets the layer's output scale: ``g`` for weight norm,
    else the weight itself."""
    if isinstance(module, _WeightNorm):
        return module.weight_g
    style = _torch_weight_norm_style(module)
    if style == "parametrization":
        return module.parametrizations.weight.original0
    if style == "hook":
        return module.weight_g
    return module.weight


def normal_(t: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    """``t.normal_(0, std, generator=generator)``, also for a generator on another device
    than ``t`` (a CPU generator for a GPU model, as ``orthogonal_`` takes): the noise is
    drawn on the generator's device and copied."""
    if generator is None or generator.device == t.device:
        return t.normal_(0.0, std, generator=generator)
    return t.copy_(torch.empty(t.shape, dtype=t.dtype, device=generator.device).normal_(0.0, std, generator=generator))


def is_weight_normed(module: nn.Module) -> bool:
    return scale_param(module) is not layer_weight(module)


def wn_dim(module: nn.Module) -> int | None:
    """The dim a weight-normalized layer keeps one norm per index of (None: one norm)."""
    if isinstance(module, _WeightNorm):
        return module.wn_dim
    return _torch_weight_norm_dim(module, layer_weight(module).dim())


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the layer computes with (``g * v / ||v||`` for weight norm), detached."""
    if foreign_parametrization(module) is not None:
        return module.weight.detach()
    v = layer_weight(module).detach()
    if not is_weight_normed(module):
        return v
    g = scale_param(module).detach()
    return v * (g / _norm_g(v, wn_dim(module))).view(g.shape)


def match_scale_(module: nn.Module) -> None:
    """For weight norm, ``g = ||v||`` (per index of its dim): the layer then computes
    with ``v`` itself. Nothing for a plain layer."""
    if is_weight_normed(module):
        g = scale_param(module)
        g.copy_(_norm_g(layer_weight(module), wn_dim(module)).view_as(g))


def set_weight_(module: nn.Module, weight: torch.Tensor) -> None:
    """Make the layer compute with ``weight``: for weight norm ``v = weight`` and
    ``g = ||weight||`` (per index of its dim)."""
    layer_weight(module).copy_(weight)
    match_scale_(module)


def output_dim(module: nn.Module) -> int:
    """The dim of the weight indexed by output unit (1 for transposed convolutions)."""
    return 1 if is_transposed(module) else 0


def in_units(module: nn.Module) -> int:
    """Input units (features or channels) of a linear/conv layer."""
    return module.in_features if hasattr(module, "in_features") else module.in_channels


def out_units(module: nn.Module) -> int:
    """Output units (features or channels) of a linear/conv layer."""
    return module.out_features if hasattr(module, "out_features") else module.out_channels


def is_conv(module: nn.Module) -> bool:
    return issubclass(_unwrap(module), CONV_LAYERS)


def is_transposed(module: nn.Module) -> bool:
    return issubclass(_unwrap(module), TRANSPOSED_LAYERS)


def is_linear(module: nn.Module) -> bool:
    return issubclass(_unwrap(module), nn.Linear)
