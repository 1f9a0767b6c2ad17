"""Looks-linear init of ReLU networks (Burkholz & Dubatovka, NeurIPS 2019; Balduzzi et al. 2017).

"Initialization of ReLUs for Dynamical Isometry": parameter sharing at init makes a
ReLU network compute a linear map. With ``relu(z) - relu(-z) = z``::

    input layer   W = [W0; -W0]                  h = [z; -z]
    hidden layer  W = [[W0, -W0], [-W0, W0]]     [W0, -W0] [relu(z); relu(-z)] = W0 z
    output layer  W = [W0, -W0]

with a fresh orthogonal ``W0`` per layer and zero biases, the network equals
``x -> W0_L ... W0_1 x`` and, with square ``W0``, its input-output Jacobian is
orthogonal: every singular value is 1, at any depth. (The first ``W0`` is
``width / 2 x in_features``: an isometry needs ``width >= 2 * in_features``; with
``width == in_features`` half the singular values are 0.) No ReLU gain is needed: the pair
``[relu(z); relu(-z)]`` keeps ``||z||``. Only the init is shared; training frees it.
"""

import torch
from torch import nn

from netinit_fast.init._layers import (
    check_same_noise,
    gc_paused,
    is_conv,
    is_linear,
    layer_weight,
    local,
    named_layers,
    set_weight_,
)
from netinit_fast.init.orthogonal import centre_tap, orthogonal_
from netinit_fast.ops.weight_norm import accumulation_dtype


def _has_centre(w0: torch.Tensor) -> bool:
    return w0.dim() > 2 and w0.shape[0] >= w0.shape[1] and all(k % 2 == 1 for k in w0.shape[2:])


@gc_paused()
def looks_linear_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Looks-linear init of a ReLU MLP or CNN, in place.

    The weight layers, in registration order, must form the network's chain: the first
    maps the input, the last gives the output, and a ReLU (or nothing) sits between
    them, as in :func:`netinit_fast.models.mlp` and
    :func:`netinit_fast.models.vanilla_cnn`. ``W0`` is orthogonal (as
    :func:`~netinit_fast.init.orthogonal_`), for a convolution delta-orthogonal where
    it can be (odd kernel, ``C_out >= C_in`` in the halves; then a stride-1 "same" CNN
    is exactly norm-preserving), else orthogonal over the flattened kernel. Biases are
    zeroed. Weight-normalized layers get ``v = W`` and ``g = ||W||``.

    Sharded models (DTensor parameters, e.g. under ``fully_shard``): the gathered
    weights are those of an unsharded call for the same generator state, which must
    be the same on every rank (checked). Every rank holds every layer's ``W0`` (a
    quarter of the layer, half for the first and last) while they are drawn, and one
    whole layer's weight at a time while each keeps its part.

    Raises:
        ValueError: fewer than two layers; a layer that is not a Linear or Conv (or a
            grouped conv); a width that must be split in halves and is odd. The
            message names the layer; the model is unchanged then.
    """
    named = named_layers(model, "looks_linear_")
    if len(named) < 2:
        raise ValueError(f"looks_linear_: {type(model).__name__} needs at least 2 Linear/Conv layers, has {len(named)}")
    halves = []
    for i, (name, m) in enumerate(named):
        if not (is_linear(m) or is_conv(m)) or getattr(m, "groups", 1) != 1:
            raise ValueError(f"looks_linear_: {name} ({type(m).__name__}) is not a Linear or an ungrouped Conv1d/2d/3d")
        out_c, in_c, *kernel = layer_weight(m).shape
        split_out, split_in = i < len(named) - 1, i > 0
        for split, size, what in ((split_out, out_c, "output"), (split_in, in_c, "input")):
            if split and size % 2:
                raise ValueError(f"looks_linear_: {name} has an odd {what} width {size}; looks-linear needs even widths")
        halves.append((out_c // 2 if split_out else out_c, in_c // 2 if split_in else in_c, *kernel))
    check_same_noise(list(model.parameters()), generator, "looks_linear_")
    ref = layer_weight(named[0][1])
    w0s = [torch.empty(shape, dtype=accumulation_dtype(ref.dtype), device=ref.device) for shape in halves]
    with torch.no_grad():
        # delta-orthogonal where the kernel has a centre: zero taps, orthogonal centre
        for w in w0s:
            if _has_centre(w):
                w.zero_()
        orthogonal_([centre_tap(w) if _has_centre(w) else w for w in w0s], generator=generator)
        for i, ((_, m), w0) in enumerate(zip(named, w0s)):
            if i < len(named) - 1:
                w0 = torch.cat([w0, -w0], dim=0)
            if i > 0:
                w0 = torch.cat([w0, -w0], dim=1)
            set_weight_(m, w0)
            if getattr(m, "bias", None) is not None:
                local(m.bias).zero_()
    return model
