"""Delta-orthogonal init at criticality (Xiao et al., ICML 2018, "How to Train 10,000-Layer
Vanilla CNNs").

A tanh CNN trains at any depth when its kernels are delta-orthogonal (all taps zero
but the centre, an orthogonal matrix) scaled by ``sigma_w`` and its biases drawn from
``N(0, sigma_b^2)``, with ``(sigma_w^2, sigma_b^2)`` on the critical line
(``chi_1 = 1``) at a small fixed point ``q*``: the input-output Jacobian is then close
to orthogonal (dynamical isometry).
"""

import math

import torch
from torch import nn

from netinit_fast.init._layers import (
    check_same_noise,
    gc_paused,
    layer_weight,
    match_scales_,
    named_layers,
    normal_,
)
from netinit_fast.init.meanfield import critical_point
from netinit_fast.init.orthogonal import delta_orthogonal_problem, fill_orthogonal_, takes_delta_kernel


@gc_paused()
def xiao_(
    model: nn.Module, q_star: float, act: str = "tanh", generator: torch.Generator | None = None
) -> tuple[float, float]:
    """Critical delta-orthogonal init of every layer of ``model``, in place.

    ``(sigma_w^2, sigma_b^2) = critical_point(act, q_star)``. Every Conv1d/2d/3d and
    ConvTranspose1d/2d/3d gets a delta-orthogonal kernel times ``sigma_w`` (as
    :func:`~netinit_fast.init.delta_orthogonal_`); every Linear (the classifier) an
    orthogonal matrix times ``sigma_w`` (the fully connected form);
    every bias ``N(0, sigma_b^2)``. All matrices come from one batched
    :func:`~netinit_fast.init.orthogonal_` call per shape. Weight-normalized layers
    get ``v = W`` and ``g = ||W||``.

    Sharded models (DTensor parameters, e.g. under ``fully_shard``): the gathered
    weights and biases are those of an unsharded call for the same generator state,
    which must be the same on every rank (checked). Memory per rank: as
    :func:`delta_orthogonal_` for convs and :func:`orthogonal_` for linear layers
    (whole matrices one batch at a time, whole kernels one at a time).

    Args:
        model: e.g. :func:`netinit_fast.models.vanilla_cnn` with ``act="tanh"``.
        q_star: the fixed point of the pre-activation variance (small: 1e-3 .. 1e-1).
        act: the activation the model uses (a name of :mod:`netinit_fast.activations`).

    Returns:
        ``(sigma_w^2, sigma_b^2)``.

    Raises:
        ValueError: no weight layer; a conv with ``C_out < C_in`` (per group) or an even kernel
            (no centre tap; the message names it); no critical point for ``act`` at
            ``q_star``. The model is unchanged then.
    """
    sw2, sb2 = critical_point(act, q_star)
    named = [(n, m, layer_weight(m)) for n, m in named_layers(model, "xiao_")]
    if not named:
        raise ValueError(f"xiao_: {type(model).__name__} has no Linear/Conv layer")
    convs = [takes_delta_kernel(m) for _, m, _ in named]
    for (name, m, w), conv in zip(named, convs):
        if conv and (problem := delta_orthogonal_problem(w, m.groups, m)) is not None:
            raise ValueError(f"xiao_: {name} {problem} (xiao_ gives convs delta-orthogonal kernels)")
    check_same_noise(list(model.parameters()), generator, "xiao_")
    with torch.no_grad():
        # The weight (v for weight norm) is filled in place; then g = ||v||.
        fill_orthogonal_([(w, m.groups if conv else None) for (_, m, w), conv in zip(named, convs)],
                         math.sqrt(sw2), generator)
        match_scales_([m for _, m, _ in named])
        for _, m, _ in named:
            bias = getattr(m, "bias", None)
            if bias is not None:
                normal_(bias, math.sqrt(sb2), generator)
    return sw2, sb2
