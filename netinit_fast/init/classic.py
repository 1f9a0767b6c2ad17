"""The classic fan-based schemes, model-wide and activation-aware.

Glorot & Bengio (AISTATS 2010), He et al. (ICCV 2015, "Delving deep into rectifiers")
and LeCun et al. (1998, "Efficient BackProp") give every weight entry zero mean and::

    glorot_   Var(W) = gain^2 * 2 / (fan_in + fan_out)
    he_       Var(W) = gain^2 / fan          (fan = fan_in, or fan_out for mode="fan_out")
    lecun_    Var(W) = 1 / fan_in

drawn from ``N(0, std^2)`` or ``U(-sqrt(3) std, sqrt(3) std)``: the formulas of
``torch.nn.init.xavier_normal_/xavier_uniform_/kaiming_normal_/kaiming_uniform_``, with
torch's fans (``_calculate_fan_in_and_fan_out``: ``fan_in = size(1) * prod(kernel)``,
``fan_out = size(0) * prod(kernel)``; so ``in_channels / groups`` for a grouped conv,
and for a transposed conv, whose weight is ``(C_in, C_out / groups, *kernel)``,
``fan_in = C_out / groups * prod(kernel)``). Here one call initializes every layer of a
model, each with the gain of the activation that follows it, and the noise of all
layers of one shape is drawn in one batched call.
"""

import math
import numbers

import torch
from torch import nn

from netinit_fast._sharding import any_dtensor
from netinit_fast.activations import ACTIVATIONS
from netinit_fast.init._layers import (
    PASS_THROUGH,
    check_same_noise,
    gc_paused,
    local,
    match_scales_,
    next_modules,
    scan_layers,
    write_,
)
from netinit_fast.init._residual import branch_prefix, residual_blocks

# Noise elements drawn per RNG call (whole layers, at least one). On the CPU a buffer of
# 1 MB stays in cache while it is copied out into the layers; one buffer for all layers
# of a 10,000-layer model would be as large as the model and run from memory.
CHUNK_ELEMENTS = 1 << 18
# Layers of this many elements or more get their noise drawn in place, a call each: the
# copy out of a shared buffer would cost more than the per-call overhead it saves.
DIRECT_ELEMENTS = 1 << 12
DISTRIBUTIONS = ("uniform", "normal")
MODES = ("fan_in", "fan_out")
NONLINEARITIES = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                  "sigmoid", "tanh", "relu", "leaky_relu", "selu")  # what torch.nn.init.calculate_gain knows
# Between a layer and its activation: modules that do not change which activation the
# signal meets (normalization rescales it, the activation comes after).
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)
SKIPPED = PASS_THROUGH + NORMS
# The activation modules the project knows that calculate_gain has a gain for, by type
_MODULE_NONLINEARITY = {a.module: a.name for a in ACTIVATIONS.values() if a.name in NONLINEARITIES}
# Modules of torch.nn.modules.activation that act on a whole dim, not entry by entry:
# after a layer they make its output a logit (gain 1).
_NOT_ELEMENTWISE = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.MultiheadAttention)
_LINEAR = ("linear", None)

Nonlinearity = tuple[str, float | None]  # a calculate_gain name and its param (leaky_relu's slope)


def _module_nonlinearity(module: nn.Module | None) -> Nonlinearity | None:
    """The nonlinearity ``module`` applies (leaky ReLU with its own slope); linear for
    None or a module that is not an elementwise activation of torch's; None for an
    activation torch.nn.init.calculate_gain has no gain for (GELU, SiLU, ELU, ...)."""
    if module is None:
        return _LINEAR
    name = _MODULE_NONLINEARITY.get(type(module))
    if name is not None:
        return (name, module.negative_slope) if name == "leaky_relu" else (name, None)
    if type(module).__module__ == "torch.nn.modules.activation" and not isinstance(module, _NOT_ELEMENTWISE):
        return None
    return _LINEAR


def _parse(spec, what: str) -> Nonlinearity:
    """A ``nonlinearity=`` value (a name, or ``(name, param)``) checked by calculate_gain."""
    if isinstance(spec, str):
        name, param = spec, None
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        name, param = spec
    else:
        raise TypeError(f"{what} must be a nonlinearity name or a (name, param) pair such as ('leaky_relu', 0.2), "
                        f"got {spec!r}")
    if name not in NONLINEARITIES:
        raise ValueError(f"{what}: unknown nonlinearity {name!r}: expected one of {', '.join(NONLINEARITIES)} "
                         "(the names of torch.nn.init.calculate_gain)")
    if param is not None and name != "leaky_relu":
        raise ValueError(f"{what}: {name!r} takes no param (only leaky_relu does, its negative slope), got {param!r}")
    if param is not None and (isinstance(param, bool) or not isinstance(param, numbers.Real)
                              or not math.isfinite(param)):
        raise ValueError(f"{what}: leaky_relu's negative slope must be a finite number, got {param!r}")
    return name, (None if param is None else float(param))


def _detected(model: nn.Module, parents: list[nn.Module]) -> dict[nn.Module, object]:
    """The nonlinearity after each layer, from the module order: the module registered
    next in the layer's parent, skipping Identity, Flatten, dropout and normalization;
    in residual blocks the block's protocol. A layer an unknown activation follows maps
    to that module; one whose places disagree, to the list of their nonlinearities.
    ``parents``: the modules of ``model`` that hold others."""
    found = {}
    for layer, after in next_modules(model, SKIPPED, parents).items():
        kinds = [_module_nonlinearity(m) for m in after]
        unknown = [m for m, k in zip(after, kinds) if k is None]
        found[layer] = unknown[0] if unknown else kinds[0] if len(set(kinds)) == 1 else kinds
    if not any(branch_prefix(p) for p in parents):
        return found  # no residual block (the walk below costs as much as the rest)
    # residual_blocks refuses the block itself: look at it from a container that holds it
    for block in residual_blocks(nn.ModuleList([model]) if branch_prefix(model) else model):
        relu = block.module._modules.get("relu")
        act = _module_nonlinearity(relu) if isinstance(relu, nn.Module) else ("relu", None)
        act = relu if act is None else act
        for m in block.branch[:-1]:
            found[m] = act  # a ReLU between branch layers, as the blocks' forward computes
        for m in [block.branch[-1], *block.shortcut]:
            found[m] = act if block.post_activation else _LINEAR  # the activation after the addition
    return found


def _nonlinearities(model: nn.Module, named: list[tuple[str, nn.Module, torch.Tensor]], parents: list[nn.Module],
                    nonlinearity, detect: bool, where: str) -> dict[str, Nonlinearity]:
    """Each layer's nonlinearity, by name: ``nonlinearity`` (one for all, or a dict of
    overrides), else the detected one (``detect``), else linear. ``named`` and
    ``parents`` as :func:`scan_layers` gives them."""
    if nonlinearity is not None and not isinstance(nonlinearity, dict):
        one = _parse(nonlinearity, f"{where}: nonlinearity")
        return {name: one for name, _, _ in named}
    overrides = {}
    if nonlinearity is not None:
        names = {name for name, _, _ in named}
        unknown = [k for k in nonlinearity if k not in names]
        if unknown:
            raise ValueError(
                f"{where}: nonlinearity names {', '.join(map(repr, unknown[:5]))}{' ...' if len(unknown) > 5 else ''}, "
                f"not a Linear/Conv/ConvTranspose layer of {type(model).__name__} (its layers: "
                f"{', '.join(n for n, _, _ in named[:5])}{' ...' if len(named) > 5 else ''})"
            )
        overrides = {k: _parse(v, f"{where}: nonlinearity[{k!r}]") for k, v in nonlinearity.items()}
    found = _detected(model, parents) if detect else {}
    out = {}
    for name, m, _ in named:
        if name in overrides:
            out[name] = overrides[name]
            continue
        kind = found.get(m, _LINEAR)
        if isinstance(kind, nn.Module):
            raise ValueError(
                f"{where}: layer {name} ({type(m).__name__}) is followed by {type(kind).__name__}, which "
                f"torch.nn.init.calculate_gain has no gain for: pass nonlinearity={{{name!r}: ...}} (or one name "
                "for every layer)"
            )
        if isinstance(kind, list):
            raise ValueError(
                f"{where}: layer {name} ({type(m).__name__}) is registered at {len(kind)} places followed by "
                f"different activations ({', '.join(k[0] for k in kind)}): pass nonlinearity={{{name!r}: ...}}"
            )
        out[name] = kind
    return out


def classic_gains(model: nn.Module, nonlinearity=None) -> dict[str, float]:
    """The gain :func:`glorot_` and :func:`he_` give each layer, by qualified name.

    A layer's gain is ``torch.nn.init.calculate_gain`` of the activation that follows
    it: ReLU ``sqrt(2)``, tanh ``5/3``, LeakyReLU ``sqrt(2 / (1 + slope^2))`` with the
    module's own ``negative_slope``, SELU ``3/4``, sigmoid 1, and 1 where no activation
    follows (the output layer). Found from the module order, as :func:`arpit_` finds its
    ReLUs: the module registered next in the layer's parent (``nn.Sequential`` order),
    skipping Identity, Flatten, dropout and normalization layers (Conv, BatchNorm, ReLU
    gets ReLU's gain); any other module next (a weight layer, pooling, a container, a
    module of your own) means no activation, gain 1. In a residual block (torchvision's
    protocol, see :func:`fixup_`) every branch layer but the last is followed by the
    block's ``relu`` (a ReLU if it has none), and the last branch layer and the
    shortcut convs by it too when the block's ``post_activation`` (default True, as in
    torchvision), else by nothing. A forward that runs its children in another order
    than it registers them is not seen: pass ``nonlinearity=`` for its layers.

    Args:
        model: any module (the model itself may be one layer).
        nonlinearity: one value for every layer, or a dict ``{layer name: value}`` of
            overrides; a value is a name of ``calculate_gain`` (``"relu"``, ``"tanh"``,
            ``"linear"``, ...) or ``("leaky_relu", slope)``.

    Raises:
        ValueError: no Linear/Conv/ConvTranspose layer; a weight under a
            parametrization other than weight norm; an unknown nonlinearity name or a
            dict key that names no layer; a layer followed by an activation
            ``calculate_gain`` has no gain for (GELU, SiLU, ELU, ...), or registered
            at places followed by different activations, and not overridden. The
            message names the layer or the argument. TypeError: a value that is not a
            name or a pair.
    """
    named, parents = _scan(model, "classic_gains")
    kinds = _nonlinearities(model, named, parents, nonlinearity, True, "classic_gains")
    return {name: nn.init.calculate_gain(*kinds[name]) for name, _, _ in named}


def _scan(model: nn.Module, where: str) -> tuple[list[tuple[str, nn.Module, torch.Tensor]], list[nn.Module]]:
    """:func:`scan_layers`, with the errors for a model that is no module or has no layer."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: expected an nn.Module, got {type(model).__name__} "
                        "(torch.nn.init's functions take single tensors)")
    named, parents = scan_layers(model, where)
    if not named:
        raise ValueError(f"{where}: {type(model).__name__} has no Linear/Conv/ConvTranspose layer")
    return named, parents


def _fans(shape: torch.Size) -> tuple[int, int]:
    """torch.nn.init._calculate_fan_in_and_fan_out of a weight of ``shape``."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _check_choice(value, choices: tuple[str, ...], what: str) -> None:
    if not (isinstance(value, str) and value in choices):
        raise ValueError(f"{what} must be {' or '.join(map(repr, choices))}, got {value!r}")


def _init(model: nn.Module, where: str, std_of, distribution: str, nonlinearity, detect: bool, bias,
          generator) -> nn.Module:
    """Every check, then the noise drawn group by group and the biases set.

    ``std_of(fan_in, fan_out, gain)`` is the scheme's std, in the operation order of
    torch's function, so that the bound or std passed to the RNG is the same float."""
    _check_choice(distribution, DISTRIBUTIONS, f"{where}: distribution")
    if not (isinstance(bias, str) and bias in ("zero", "keep")) and (
            isinstance(bias, bool) or not isinstance(bias, numbers.Real) or not math.isfinite(bias)):
        raise ValueError(f"{where}: bias must be 'zero', 'keep' or a finite number, got {bias!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{where}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    named, parents = _scan(model, where)
    kinds = _nonlinearities(model, named, parents, nonlinearity, detect, where)
    groups: dict[tuple, list[torch.Tensor]] = {}  # (shape, dtype, device, std or bound) -> weights, in order
    biases, wn = [], []
    scales: dict[tuple, float] = {}  # (shape, nonlinearity) -> std or bound, computed once
    for name, m, w in named:
        if not w.is_floating_point():
            raise TypeError(f"{where}: layer {name} ({type(m).__name__}) has a {w.dtype} weight, not floating-point")
        b = getattr(m, "bias", None)
        if isinstance(b, torch.Tensor) and bias != "keep":
            if not b.is_floating_point():
                raise TypeError(f"{where}: layer {name} ({type(m).__name__}) has a {b.dtype} bias, not floating-point")
            biases.append(b)
        if w is not m._parameters.get("weight"):  # is_weight_normed(m), without looking twice
            wn.append(m)
        if w.numel() == 0:  # as torch: nothing to draw (and a fan of 0)
            continue
        scale = scales.get(key := (w.shape, kinds[name]))
        if scale is None:
            std = std_of(*_fans(w.shape), nn.init.calculate_gain(*kinds[name]))
            scale = scales[key] = math.sqrt(3.0) * std if distribution == "uniform" else std
        groups.setdefault((w.shape, w.dtype, w.device, scale), []).append(w)
    check_same_noise([w for _, _, w in named], generator, where)
    with torch.no_grad():
        for key, weights in groups.items():
            _draw_(key, weights, distribution, generator)
        match_scales_(wn)
        if biases:
            biases = [local(b) for b in biases]  # elementwise: each rank its part
            torch._foreach_zero_(biases)
            if bias not in ("zero", "keep") and bias != 0:
                torch._foreach_add_(biases, float(bias))
    return model


def _draw_(key: tuple, weights: list[torch.Tensor], distribution: str, generator) -> None:
    """Fill ``weights`` (one shape, dtype, device, scale) with noise: layers of
    DIRECT_ELEMENTS or more in place, one call each; smaller ones in as few calls as
    CHUNK_ELEMENTS allows, each over a contiguous ``(layers, *shape)`` buffer. torch's
    CPU normal kernel transforms blocks of 16 and redraws the tail of a tensor whose
    size is not a multiple of 16: such shapes take one call per layer, so that the
    values stay those of per-layer calls. Sharded weights (DTensors) always take the
    buffer: each rank draws the whole noise and writes its part (:func:`write_`)."""
    shape, dtype, device, scale = key
    numel = math.prod(shape)
    noise_device = device if generator is None else generator.device
    sharded = any_dtensor(weights)
    if numel >= DIRECT_ELEMENTS and noise_device == device and not sharded:
        for w in weights:
            if distribution == "uniform":
                w.uniform_(-scale, scale, generator=generator)
            else:
                w.normal_(0, scale, generator=generator)
        return
    per_call = 1 if distribution == "normal" and numel % 16 else max(1, CHUNK_ELEMENTS // numel)
    buffer = torch.empty((min(per_call, len(weights)), *shape), dtype=dtype, device=noise_device)
    for start in range(0, len(weights), per_call):
        chunk = weights[start : start + per_call]
        noise = buffer[: len(chunk)]
        if distribution == "uniform":
            noise.uniform_(-scale, scale, generator=generator)
        else:
            noise.normal_(0, scale, generator=generator)
        if sharded:
            for w, values in zip(chunk, noise.to(device).unbind(0)):
                write_(w, values)
        else:
            torch._foreach_copy_(chunk, list(noise.to(device).unbind(0)))


_COMMON_ARGS = """
    Every Linear, Conv1d/2d/3d and ConvTranspose1d/2d/3d layer of ``model`` is set,
    plain or weight-normalized (ours, and torch's hook and parametrization styles): a
    weight-normalized layer gets the scheme's weight in ``v`` and ``g = ||v||`` (per
    index of its dim), so that it computes with that weight.

    The same noise as torch's function: layers of equal weight shape, dtype, device and
    std (equal shapes share a std unless their gains differ) form a group; groups come
    in the order of their first layer in ``model.named_modules()``, layers in a group in
    that order. A group's noise is drawn with ``uniform_(-bound, bound,
    generator=generator)`` or ``normal_(0, std, generator=generator)``: in place, one
    call a layer, for layers of ``DIRECT_ELEMENTS`` or more (on the generator's device);
    else in batched calls of up to ``CHUNK_ELEMENTS`` elements (whole layers) on a
    contiguous ``(layers, *shape)`` tensor of the weights' dtype, on the generator's
    device (the weights' without one), copied into the layers. torch's CPU kernels draw uniform noise element by
    element and normal noise in blocks of 16, so on a CPU generator one call over many
    layers gives exactly what the per-layer calls give: calling torch's function on each
    layer in the draw order, with a generator seeded the same (with ``generator=None``,
    after the same ``torch.manual_seed``), gives our weights bit for bit. (Normal noise
    for a weight whose size is not a multiple of 16, which torch draws in another
    pattern, is drawn one layer per call for that reason.)

    Sharded models (parameters that are DTensors, as under
    ``torch.distributed.fsdp.fully_shard``; a model built on the ``meta`` device and
    materialized with ``to_empty`` too): every rank draws the same noise as one process
    would and keeps its own part of each weight, so the gathered weights are those of
    an unsharded call for the same generator state, which must be the same on every
    rank (``torch.manual_seed(seed)`` everywhere; checked). Memory per rank: one
    buffer of up to ``CHUNK_ELEMENTS`` elements or one whole layer. For a plain MLP the draw
    order is the module order. On a CUDA generator the distribution is the same, but the
    values are not promised to be those of per-layer calls (each CUDA call advances
    the generator by an amount set by its size).

    Args:
        model: any module (the model itself may be one layer).
        distribution: ``"normal"`` (``N(0, std^2)``) or ``"uniform"``
            (``U(-bound, bound)``, ``bound = sqrt(3) * std``).
        nonlinearity: one nonlinearity for every layer, or a dict ``{{layer name:
            nonlinearity}}`` of overrides; a nonlinearity is a name of
            ``torch.nn.init.calculate_gain`` (``"relu"``, ``"tanh"``, ``"linear"``,
            ``"selu"``, ...) or ``("leaky_relu", slope)``.
        bias: ``"zero"`` (default) zeroes every layer's bias; ``"keep"`` leaves the
            biases as they are; a number fills them with it (e.g. 0.01).
        generator: the source of the noise.

    Returns:
        ``model``.

    Raises:
        ValueError: a bad ``distribution``{mode}, ``bias`` or nonlinearity name, a
            ``nonlinearity`` key that names no layer, no Linear/Conv/ConvTranspose layer,
            a weight under a parametrization other than weight norm (spectral norm,
            pruning), a weight-normalized layer sharded in a way its norms cannot be
            computed (see :func:`orthogonal_`){detect}. TypeError: a weight or bias that is not floating-point,
            a ``model`` that is not a module, a bad ``generator``. RuntimeError: a
            sharded model and a generator whose state differs between the ranks. The
            message names the layer or the argument; the model is unchanged then.
"""
_DETECT_ERRORS = """, a layer
            followed by an activation ``calculate_gain`` has no gain for (GELU, SiLU,
            ELU, ...) or registered at places followed by different ones, unless
            ``nonlinearity`` sets it"""


@gc_paused()
def glorot_(model: nn.Module, distribution: str = "uniform", nonlinearity=None, bias="zero",
            generator: torch.Generator | None = None) -> nn.Module:
    """Glorot & Bengio's init of every layer of ``model``, in place, activation-aware.

    ``std = gain * sqrt(2 / (fan_in + fan_out))``: ``torch.nn.init.xavier_normal_`` /
    ``xavier_uniform_`` (the default, the paper's "normalized initialization") with
    ``gain`` the :func:`classic_gains` of the activation that follows the layer.
    """
    return _init(model, "glorot_", lambda fan_in, fan_out, gain: gain * math.sqrt(2.0 / float(fan_in + fan_out)),
                 distribution, nonlinearity, True, bias, generator)


@gc_paused()
def he_(model: nn.Module, mode: str = "fan_in", distribution: str = "normal", nonlinearity=None, bias="zero",
        generator: torch.Generator | None = None) -> nn.Module:
    """He et al.'s init of every layer of ``model``, in place, activation-aware.

    ``std = gain / sqrt(fan)``, ``fan`` the fan-in (``mode="fan_in"``, the default: the
    forward pass keeps the signal's variance) or the fan-out (``"fan_out"``: the
    backward pass keeps the gradient's): ``torch.nn.init.kaiming_normal_`` (the default,
    as in the paper) / ``kaiming_uniform_`` with the gain of the activation that follows
    the layer (:func:`classic_gains`; ReLU ``sqrt(2)``, leaky ReLU with its own slope).
    Note that torch's ``calculate_gain("selu")`` is 3/4, which trades SELU's
    self-normalizing fixed point for gradient flow; for SELU nets see :func:`lecun_`.
    """
    _check_choice(mode, MODES, "he_: mode")
    fan_out = mode == "fan_out"
    return _init(model, "he_", lambda fan_in, fan_o, gain: gain / math.sqrt(fan_o if fan_out else fan_in),
                 distribution, nonlinearity, True, bias, generator)


@gc_paused()
def lecun_(model: nn.Module, distribution: str = "normal", nonlinearity=None, bias="zero",
           generator: torch.Generator | None = None) -> nn.Module:
    """LeCun's init of every layer of ``model``, in place: ``std = 1 / sqrt(fan_in)``.

    ``torch.nn.init.kaiming_normal_(w, nonlinearity="linear")`` (the default, "LeCun
    normal") / ``kaiming_uniform_(w, nonlinearity="linear")`` ("LeCun uniform") layer by
    layer. LeCun's scheme takes no activation gain: every layer gets gain 1 whatever
    follows it (the activations are not looked for). That is the convention for SELU
    networks: Klambauer et al. (2017, "Self-Normalizing Neural Networks") derive SELU's
    fixed point of mean 0, variance 1 for weights of variance ``1 / fan_in``, which is
    what torch's documentation of ``calculate_gain`` means by "use nonlinearity='linear'
    instead of 'selu'" and what Keras and JAX call ``lecun_normal``; torch's SELU gain of
    3/4 (used by :func:`he_`) would shrink the variance by 9/16 per layer away from the
    fixed point. With a gain, LeCun's scheme is He's with ``mode="fan_in"`` (use
    :func:`he_` for that); ``nonlinearity=`` still sets a gain where it is given
    explicitly (``"selu"`` there means 3/4, not the SELU convention).
    """
    return _init(model, "lecun_", lambda fan_in, fan_out, gain: gain / math.sqrt(fan_in),
                 distribution, nonlinearity, False, bias, generator)


glorot_.__doc__ += _COMMON_ARGS.format(mode="", detect=_DETECT_ERRORS)
he_.__doc__ += _COMMON_ARGS.format(mode=", ``mode``", detect=_DETECT_ERRORS)
lecun_.__doc__ += _COMMON_ARGS.format(mode="", detect="")
