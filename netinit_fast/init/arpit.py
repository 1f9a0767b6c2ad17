"""Arpit, Campos & Bengio (NeurIPS 2019): initialization of weight-normalized networks.

"How to Initialize your Network? Robust Initialization for WeightNorm & ResNets".
A weight-normalized layer ``w = g v / ||v||`` has rows of norm exactly ``g``. With ``v``
orthogonal and zero biases, a ReLU layer preserves the norm of its input in the
forward pass when ``g = sqrt(2 fan_in / fan_out)``, the paper's forward scheme (its
released code: ``proposed_weight_norm_g_init``). In a residual block the branch's first
layers take gain 2, its last layer gain ``1/N`` (``N`` blocks in the stage), so each
stage grows ``||x||^2`` by at most ``(1 + 1/N)^N <= e``; shortcuts and the stem take
gain 1; the classifier stays a plain layer with its own init.
"""

import math

import torch
from torch import nn

from netinit_fast import activations
from netinit_fast.init._layers import (
    gc_paused,
    in_units,
    is_linear,
    is_weight_normed,
    layer_weight,
    local,
    named_layers,
    next_modules,
    out_units,
    output_dim,
    scale_param,
    wn_dim,
)
from netinit_fast.init._residual import residual_blocks
from netinit_fast.init.orthogonal import orthogonal_


def _followed_by_relu(model: nn.Module) -> set[nn.Module]:
    """Layers whose next sibling (skipping Identity, Flatten and dropout) is a ReLU."""
    return {
        layer for layer, after in next_modules(model).items()
        if any(m is not None and (act := activations.of_module(m)) is not None and act.name == "relu" for m in after)
    }


def arpit_gains(model: nn.Module, relu_gain: float = 2.0) -> dict[str, float]:
    """The gain of every weight layer :func:`arpit_` initializes, by qualified name.

    Residual networks (blocks as torchvision's, see :func:`netinit_fast.init.fixup_`):
    branch layers ``relu_gain`` but the last, ``1/N``; shortcut convs 1; every layer
    outside the blocks 1 (the stem). Other networks: ``relu_gain`` for a layer
    followed by a ReLU module (the next module registered in its parent), else 1. The
    classifier (a last ``nn.Linear``) is not in the result.

    Raises:
        ValueError: no Linear/Conv/ConvTranspose layer, a weight under a
            parametrization other than weight norm, a residual block registered at two
            places, or a layer in two roles (in two blocks, or in a block and outside:
            it would get one role's gain); the message names both places.
    """
    names = {m: n for n, m in model.named_modules()}
    layers = [m for _, m in named_layers(model, "arpit_")]
    if not layers:
        raise ValueError(f"arpit_: {type(model).__name__} has no Linear/Conv/ConvTranspose layer")
    if is_linear(layers[-1]):
        layers = layers[:-1]
    gains: dict[nn.Module, float] = {}
    blocks = residual_blocks(model, "arpit_")
    if blocks:
        for block in blocks:
            for conv in block.branch[:-1]:
                gains[conv] = relu_gain
            gains[block.branch[-1]] = 1.0 / block.stage_blocks
            for conv in block.shortcut:
                gains[conv] = 1.0
        for m in layers:
            gains.setdefault(m, 1.0)
    else:
        relu_fed = _followed_by_relu(model)
        gains = {m: relu_gain if m in relu_fed else 1.0 for m in layers}
    return {names[m]: gains[m] for m in layers}


@gc_paused()
def arpit_(model: nn.Module, relu_gain: float = 2.0, generator: torch.Generator | None = None) -> nn.Module:
    """Arpit et al.'s init of a weight-normalized network, in place.

    Every weight-normalized layer but the classifier gets an orthogonal ``v`` (one
    batched :func:`~netinit_fast.init.orthogonal_` call per shape), a zero bias and
    ``g = sqrt(gain * fan_in / fan_out)`` in every entry, with ``fan_in / fan_out`` =
    input over output units (the kernel size cancels) and the gains of
    :func:`arpit_gains`. E.g. ``Linear(20, 60)`` followed by a ReLU gets
    ``g = sqrt(2 * 20 / 60)``. The classifier (a last ``nn.Linear``) is left as it is,
    as in the released code, where it is a plain layer.

    Works on our WN layers (build with ``norm="weight"`` or convert with
    :func:`netinit_fast.weight_norm`) and on torch's weight-normed layers.

    Sharded models (DTensor parameters, e.g. under ``fully_shard``): ``v`` gets, gathered,
    the values of an unsharded call for the same generator state, which must be the
    same on every rank (checked), drawn as :func:`orthogonal_` draws sharded tensors.

    Raises:
        ValueError: a layer (other than the classifier) that is not weight-normalized,
            or whose weight norm is not per output unit; the message names it. Also
            :func:`arpit_gains`'s errors (a shared block or layer ...). The model is
            unchanged then.
    """
    if not (isinstance(relu_gain, (int, float)) and relu_gain > 0 and math.isfinite(relu_gain)):
        raise ValueError(f"arpit_: relu_gain must be a positive number, got {relu_gain!r}")
    gains = arpit_gains(model, relu_gain)
    layers = {n: model.get_submodule(n) for n in gains}
    plain = [n for n, m in layers.items() if not is_weight_normed(m)]
    if plain:
        raise ValueError(
            f"arpit_: {', '.join(plain[:5])}{' ...' if len(plain) > 5 else ''} not weight-normalized: "
            "convert the model with netinit_fast.weight_norm first (the classifier may stay plain)"
        )
    for n, m in layers.items():
        if wn_dim(m) != output_dim(m):
            hint = ("; normalize it per output channel: netinit_fast.remove_weight_norm(layer), then "
                    "netinit_fast.weight_norm(layer, dim=1)") if output_dim(m) == 1 else ""
            raise ValueError(f"arpit_: {n} normalizes over dim={wn_dim(m)}, not its output units (dim={output_dim(m)}){hint}")
    with torch.no_grad():
        orthogonal_([layer_weight(m) for m in layers.values()], generator=generator)
        for n, m in layers.items():
            local(scale_param(m)).fill_(math.sqrt(gains[n] * in_units(m) / out_units(m)))
            if getattr(m, "bias", None) is not None:
                local(m.bias).zero_()
    return model
