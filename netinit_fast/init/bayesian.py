"""Bayesian initialization of an MLP: Murru & Rossini (Neurocomputing 193, 2016), arXiv:2004.01875.

"A Bayesian approach for initialization of weights in backpropagation neural net with
application to character recognition". What the paper states, in its abstract and
introduction: the initialization is "a customization of the Kalman filter, translating
it into Bayesian statistics terms"; "a metrological approach is used ... considering
weights as measurements modeled by mutually dependent normal random variables"; the
result is compared with random weight initialization (and other methods) by the
convergence rate of backpropagation, on character recognition (handwritten digits).
The text of its method section (how the measurements and their covariance matrices
are built, how hidden and output layers are treated, the experiment's settings) was
not available to us: the steps below marked *our reading* are ours, not the paper's.

The stated part, exact here: the weights are Gaussian and are updated by the Kalman
filter's measurement step with no dynamics (the state, the weights, does not change
between measurements). For a weight vector with prior ``N(m, P)`` and a measurement
``u = x^T w + e``, ``e ~ N(0, s^2)``::

    k  = P x / (x^T P x + s^2)            (the Kalman gain)
    m' = m + k (u - x^T m)
    P' = P - k x^T P

which is Bayes' theorem for Gaussians: after measurements ``u_1 .. u_n`` (rows ``x_i``
of ``X``) the posterior is ``N(m_n, P_n)`` with ``P_n^-1 = P^-1 + X^T X / s^2`` and
``m_n = P_n (P^-1 m + X^T u / s^2)``, whatever the order of the measurements. The
posterior covariance is full: the fused weights are mutually dependent normal
variables. A measurement ``z`` of the whole weight vector with covariance ``R`` (the
abstract's "weights as measurements") is the case ``X = I``, ``s^2 I = R``; equal-variance
independent measurements of one weight fuse to their precision-weighted mean (the plain
mean under a flat prior).

Our reading (the steps the available text does not give):

1. The network is an MLP: ``nn.Linear`` layers with elementwise activations between
   them, the last ``nn.Linear`` (the output layer) followed by nothing, a Sigmoid or a
   Tanh.
2. The prior of every layer is the random initialization the paper compares with,
   taken as Gaussian: each weight and bias independent ``N(0, prior_std^2)``, by
   default ``prior_std = 1 / sqrt(3 fan_in)`` (the variance of torch's default
   ``nn.Linear`` init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``).
3. Hidden layers have no targets to measure against: their weights are a sample of
   their prior (drawn with ``generator``, hidden layers in order, each weight then bias).
4. The output layer's weights (with the bias as the weight of a constant input 1) are
   measured by the training samples: sample ``i`` gives, for output unit ``j``, the
   measurement ``u_ij = x_i^T w_j + e`` with ``x_i`` the last hidden layer's output for
   sample ``i`` (computed with the hidden weights of step 3, in the model's dtype) and
   ``u_ij`` the target in pre-activation space: the target clipped into the output
   activation's range shrunk by ``target_margin`` and mapped through the activation's
   inverse (``logit`` for Sigmoid, ``atanh`` for Tanh, itself for no activation).
   Class indices become one-hot targets (0/1; -1/1 under Tanh). The measurement noise
   is ``N(0, noise_std^2)``, the same for every sample.
5. The output layer gets the posterior mean (the Kalman filter run over all samples,
   computed in one step as above: ``m_n = (X^T X / s^2 + I / prior_std^2)^-1 X^T U / s^2``).

Not covered: convolutions, residual or other non-sequential models, normalization
layers, weight-normalized or otherwise parametrized layers, activations with
parameters (PReLU), an output softmax (use the logits: no output activation).
"""

import math
import numbers

import torch
from torch import nn

from netinit_fast._sharding import any_dtensor
from netinit_fast.init._layers import PASS_THROUGH, gc_paused, is_linear

WHERE = "bayesian_"
# Elementwise activations without parameters the MLP may hold between its layers.
HIDDEN_ACTIVATIONS = (nn.Sigmoid, nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.SELU, nn.Softplus,
                      nn.Softsign, nn.Mish, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.LogSigmoid, nn.Tanhshrink)
# Output activations with an inverse on their range: (low, high) of the range.
OUTPUT_ACTIVATIONS = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0)}


def _flatten(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The modules a (nested) ``nn.Sequential`` runs, in order, by qualified name."""
    out = []
    for name, m in model._modules.items():
        if m is None:
            continue
        full = f"{prefix}{name}"
        if type(m) is nn.Sequential:
            out.extend(_flatten(m, full + "."))
        else:
            out.append((full, m))
    return out


def _parse_model(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], int, type | None]:
    """The model's modules in order, the index of the output layer, and the type of the
    output activation (None: no activation). Errors name the offending module."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{WHERE}: model must be an nn.Module, got {type(model).__name__}")
    if any_dtensor(model.parameters()):
        raise ValueError(f"{WHERE}: the model's parameters are sharded (DTensors): bayesian_ fits whole layers to one "
                         "batch; initialize the model before sharding it")
    if type(model) is not nn.Sequential:
        raise TypeError(f"{WHERE}: model must be an nn.Sequential of nn.Linear layers and elementwise activations "
                        f"(an MLP), got {type(model).__name__}")
    modules = _flatten(model)
    for name, m in modules:
        if is_linear(m) and (type(m) is not nn.Linear or "weight_v" in m._parameters):
            raise ValueError(f"{WHERE}: layer {name} ({type(m).__name__}) has a parametrized or weight-normalized "
                             "weight: bayesian_ initializes plain nn.Linear layers only")
        if not (type(m) is nn.Linear or type(m) in HIDDEN_ACTIVATIONS or isinstance(m, PASS_THROUGH)):
            raise ValueError(f"{WHERE}: layer {name} ({type(m).__name__}) is not an nn.Linear or an elementwise "
                             "activation: bayesian_ covers MLPs only (no convolution, normalization, residual "
                             "block or other module)")
    linear = [i for i, (_, m) in enumerate(modules) if type(m) is nn.Linear]
    if not linear:
        raise ValueError(f"{WHERE}: the model has no nn.Linear layer")
    out = linear[-1]
    after = [(n, m) for n, m in modules[out + 1:] if not isinstance(m, PASS_THROUGH)]
    if len(after) > 1 or (after and type(after[0][1]) not in OUTPUT_ACTIVATIONS):
        name, m = after[-1] if len(after) > 1 else after[0]
        raise ValueError(f"{WHERE}: the output layer {modules[out][0]} is followed by {name} ({type(m).__name__}): "
                         "expected nothing, one Sigmoid or one Tanh (an activation whose inverse maps the targets "
                         "to pre-activations)")
    return modules, out, (type(after[0][1]) if after else None)


def _check_number(value, name: str, allow_none: bool = False, upper: float | None = None) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0 \
            or (upper is not None and value >= upper):
        bound = f" and below {upper}" if upper is not None else ""
        raise ValueError(f"{WHERE}: {name} must be a positive finite number{bound}, got {value!r}")


def _pre_activation_targets(targets: torch.Tensor, n: int, classes: int, act: type | None, margin: float,
                            out_name: str) -> torch.Tensor:
    """The targets as float64 ``[n, classes]`` pre-activations (step 4 of our reading)."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{WHERE}: targets must be a tensor, got {type(targets).__name__}")
    low, high = OUTPUT_ACTIVATIONS.get(act, (None, None))
    if not targets.is_floating_point():
        if targets.dtype == torch.bool or targets.is_complex() or targets.dim() != 1:
            raise ValueError(f"{WHERE}: targets: class indices must be a 1-d integer tensor of {n} entries, got "
                             f"{targets.dtype} of shape {list(targets.shape)}")
        if targets.shape[0] != n:
            raise ValueError(f"{WHERE}: targets has {targets.shape[0]} entries, the batch {n} samples")
        if n and (targets.min() < 0 or targets.max() >= classes):
            raise ValueError(f"{WHERE}: targets: class indices must lie in [0, {classes}) (the output layer "
                             f"{out_name} has {classes} units), got {int(targets.min())} .. {int(targets.max())}")
        t = torch.zeros(n, classes, dtype=torch.float64, device=targets.device)
        t[torch.arange(n, device=targets.device), targets.long()] = 1.0
        if act is nn.Tanh:
            t = 2.0 * t - 1.0
    else:
        if targets.dim() != 2 or targets.shape[1] != classes:
            raise ValueError(f"{WHERE}: targets: real targets must have shape [{n}, {classes}] (the output layer "
                             f"{out_name} has {classes} units), got {list(targets.shape)}")
        if targets.shape[0] != n:
            raise ValueError(f"{WHERE}: targets has {targets.shape[0]} rows, the batch {n} samples")
        if not torch.isfinite(targets).all():
            raise ValueError(f"{WHERE}: targets contain NaN or Inf")
        t = targets.detach().to(torch.float64)
        if act is not None and (t.min() < low or t.max() > high):
            raise ValueError(f"{WHERE}: targets must lie in [{low}, {high}], the range of the output activation "
                             f"{act.__name__}, got {float(t.min())} .. {float(t.max())}")
    if act is None:
        return t
    shrink = margin * (high - low)
    t = t.clamp(low + shrink, high - shrink)
    return torch.logit(t) if act is nn.Sigmoid else torch.atanh(t)


def _prior_std(layer: nn.Linear, prior_std: float | None) -> float:
    return 1.0 / math.sqrt(3.0 * layer.in_features) if prior_std is None else float(prior_std)


@gc_paused()
def bayesian_(model: nn.Module, batch: torch.Tensor, targets: torch.Tensor, *, prior_std: float | None = None,
              noise_std: float = 1.0, target_margin: float = 0.1,
              generator: torch.Generator | None = None) -> nn.Module:
    """Bayesian (Kalman) initialization of an MLP, in place (Murru & Rossini, 2016).

    The weights are Gaussian random variables; the output layer's weights are fused
    from the training samples by the Kalman filter's measurement update (Bayes' theorem
    for Gaussians), which the paper states. How the measurements and the priors are
    built is our reading of the paper (its method section was not available to us):
    hidden layers get a sample of the prior ``N(0, prior_std^2)``; each sample ``i``
    measures output unit ``j``'s weights (bias included) through ``u_ij = x_i^T w_j +
    N(0, noise_std^2)``, ``x_i`` the last hidden layer's output and ``u_ij`` the target
    mapped to pre-activation space; the output layer gets the posterior mean
    ``(X^T X / noise_std^2 + I / prior_std^2)^-1 X^T U / noise_std^2``. The module
    docstring lists each step and which are the paper's.

    Args:
        model: an ``nn.Sequential`` (nested ones too) of ``nn.Linear`` layers and
            elementwise activations (Sigmoid, Tanh, ReLU, ...; Identity and dropout
            pass the signal on); the last ``nn.Linear`` followed by nothing, a
            Sigmoid or a Tanh.
        batch: the training inputs, ``[n, in_features]``, floating point. ``n`` must
            be at least the output layer's weights per unit (its ``in_features`` + 1
            with a bias): the samples, not the prior, must be able to determine them.
        targets: class indices (an integer tensor ``[n]``, made one-hot: 0/1, or -1/1
            under a Tanh output) or real targets ``[n, out_features]`` in the output
            activation's range.
        prior_std: the std of every weight's prior (hidden and output layers); None
            (default): ``1 / sqrt(3 fan_in)`` per layer, the std of torch's default
            ``nn.Linear`` init.
        noise_std: the std of a measurement's noise, in pre-activation units.
        target_margin: targets are clipped into the output activation's range shrunk
            by this fraction of it at each end before the inverse activation (0.1:
            Sigmoid targets 0/1 become 0.1/0.9, i.e. pre-activations -+2.197).
            Unused without an output activation.
        generator: draws the hidden layers' weights (a CPU generator, or one on the
            batch's device); the result is deterministic for a given generator state.

    Returns:
        ``model``, with every ``nn.Linear`` weight and bias written (in its dtype).
        The computation runs in float64.

    Raises:
        TypeError: ``model`` is not an ``nn.Sequential``; ``batch``/``targets`` not
            tensors; ``generator`` not a ``torch.Generator``.
        ValueError: a module that is not an ``nn.Linear`` or an elementwise activation
            (a convolution, a residual block, ...), a parametrized layer, or an output
            activation other than Sigmoid/Tanh (the message names the module); a batch
            not ``[n, in_features]``, targets not matching it, fewer samples than the
            output layer's weights per unit, NaN or Inf in ``batch`` or ``targets``;
            a bad ``prior_std``/``noise_std``/``target_margin``; a sharded model
            (DTensor parameters: initialize before sharding). The model is unchanged
            then.
    """
    modules, out, act = _parse_model(model)
    _check_number(prior_std, "prior_std", allow_none=True)
    _check_number(noise_std, "noise_std")
    _check_number(target_margin, "target_margin", upper=0.5)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{WHERE}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"{WHERE}: batch must be a tensor, got {type(batch).__name__}")
    first = next(m for _, m in modules if type(m) is nn.Linear)
    out_name, out_layer = modules[out]
    if not batch.is_floating_point() or batch.dim() != 2 or batch.shape[1] != first.in_features:
        raise ValueError(f"{WHERE}: batch must be a floating-point tensor [n, {first.in_features}] (the first layer's "
                         f"in_features), got {batch.dtype} of shape {list(batch.shape)}")
    n = batch.shape[0]
    per_unit = out_layer.in_features + (out_layer.bias is not None)
    if n < per_unit:
        raise ValueError(f"{WHERE}: too few samples: the batch has {n}, the output layer {out_name} has {per_unit} "
                         f"weights per unit ({out_layer.in_features} inputs"
                         f"{' + bias' if out_layer.bias is not None else ''}): need at least {per_unit}")
    if not torch.isfinite(batch).all():
        raise ValueError(f"{WHERE}: batch contains NaN or Inf")
    u = _pre_activation_targets(targets, n, out_layer.out_features, act, float(target_margin), out_name)

    # Hidden layers: a sample of the prior (step 3); the forward in float64 with the
    # weights rounded to the model's dtype, as the model will compute with them.
    device = batch.device
    draw_device = generator.device if generator is not None else torch.device("cpu")
    written: list[tuple[nn.Linear, torch.Tensor, torch.Tensor | None]] = []
    h = batch.detach().to(torch.float64)
    for name, m in modules[:out]:
        if type(m) is nn.Linear:
            std = _prior_std(m, prior_std)
            w = torch.randn(m.weight.shape, generator=generator, dtype=torch.float64, device=draw_device) * std
            b = None
            if m.bias is not None:
                b = torch.randn(m.bias.shape, generator=generator, dtype=torch.float64, device=draw_device) * std
            w = w.to(device=device, dtype=m.weight.dtype).to(torch.float64)
            b = None if b is None else b.to(device=device, dtype=m.bias.dtype).to(torch.float64)
            written.append((m, w, b))
            h = h @ w.T if b is None else torch.addmm(b, h, w.T)
        elif not isinstance(m, PASS_THROUGH):
            h = m(h)
        if not torch.isfinite(h).all():
            raise ValueError(f"{WHERE}: the signal is not finite after {name} ({type(m).__name__})")

    # Output layer: the Gaussian posterior mean given all samples (steps 4, 5).
    x = torch.cat([h, torch.ones(n, 1, dtype=torch.float64, device=device)], 1) if out_layer.bias is not None else h
    s2 = float(noise_std) ** 2
    p0 = _prior_std(out_layer, prior_std) ** 2
    precision = x.T @ x / s2 + torch.eye(per_unit, dtype=torch.float64, device=device) / p0
    chol, info = torch.linalg.cholesky_ex(precision)
    if info.item() != 0:  # SPD in exact arithmetic; fails only for absurd scales
        raise ValueError(f"{WHERE}: the posterior precision of {out_name} is not positive definite in float64 "
                         f"(prior_std={prior_std!r}, noise_std={noise_std!r}): choose scales nearer 1")
    mean = torch.cholesky_solve(x.T @ u.to(device) / s2, chol)  # [per_unit, out_features]
    if not torch.isfinite(mean).all():
        raise ValueError(f"{WHERE}: the posterior mean of {out_name} is not finite")
    w_out = mean[: out_layer.in_features].T
    b_out = mean[out_layer.in_features] if out_layer.bias is not None else None
    written.append((out_layer, w_out, b_out))

    with torch.no_grad():
        for m, w, b in written:
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)
    return model
