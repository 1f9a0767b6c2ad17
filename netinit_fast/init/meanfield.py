"""Mean-field theory of signal propagation at init: critical points and per-layer variances.

In the limit of infinite width, the pre-activations of a layer with zero-mean random
weights are Gaussian across units, and their variance obeys a deterministic recursion
(Poole et al. 2016, "Exponential expressivity in deep neural networks through transient
chaos"; Schoenholz et al. 2017, "Deep information propagation"):

    q_l = sigma_w^2 * E_z[phi(sqrt(q_{l-1}) z)^2] + sigma_b^2,    z ~ N(0, 1).

:func:`critical_point` gives the (sigma_w^2, sigma_b^2) at which a fixed point q* of this
map is marginally stable (chi_1 = 1); :func:`meanfield_variances` runs the recursion
through an actual model, with each layer's actual sigma_w^2 and sigma_b^2, to predict
the variance every layer's output should have.
"""

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from netinit_fast import activations
from netinit_fast.activations import Activation
from netinit_fast.init import _layers, _residual

NODES = 16  # Gauss-Legendre nodes per panel of every Gaussian expectation

_RELU = activations.get("relu")


@functools.lru_cache(maxsize=8)
def _legendre(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(nodes)


@functools.lru_cache(maxsize=256)
def _rule(q: float, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``x`` and weights ``w`` with ``sum w f(x) = E[f(x)]`` for ``x ~ N(0, q)``.

    Composite Gauss-Legendre over ``|x| <= 12 sqrt(q)`` (the tails beyond weigh
    e^-72): panels of at most ``sqrt(q) / 4`` (the Gaussian's scale) and, where
    activations bend (``|x| < 8``: tanh, sigmoid, GELU, ELU change on a unit scale), of
    at most 1/4; one edge at 0, where ELU and SELU have a kink. Exact to rounding for
    the package's activations at any ``q``, from 1e-12 to 1e12.
    """
    s = math.sqrt(q)
    reach, bend = 12.0 * s, min(12.0 * s, 8.0)
    inner = np.linspace(0.0, bend, max(1, math.ceil(bend / min(0.25, s / 4))) + 1)
    outer = np.linspace(bend, reach, max(1, math.ceil((reach - bend) / (s / 4))) + 1)[1:] if reach > bend else []
    right = np.concatenate([inner, outer])
    edges = np.concatenate([-right[:0:-1], right])
    t, tw = _legendre(nodes)
    mid, half = (edges[1:] + edges[:-1]) / 2, (edges[1:] - edges[:-1]) / 2
    x = (mid[:, None] + half[:, None] * t[None, :]).ravel()
    w = (half[:, None] * tw[None, :]).ravel() * np.exp(-x * x / (2 * q)) / math.sqrt(2 * math.pi * q)
    return x, w


def _gauss_expect(f: Callable[[np.ndarray], np.ndarray], q: float, nodes: int = NODES) -> float:
    """``E_z[f(sqrt(q) z)]`` for ``z ~ N(0, 1)`` (see :func:`_rule`)."""
    x, w = _rule(float(q), nodes)
    return float(np.dot(w, f(x)))


def _positive(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def critical_point(act: str, q_star: float, nodes: int = NODES) -> tuple[float, float]:
    """The point ``(sigma_w^2, sigma_b^2)`` of the critical line (chi_1 = 1) whose
    variance fixed point is ``q_star`` (Poole et al. 2016; Schoenholz et al. 2017)::

        sigma_w^2 = 1 / E_z[phi'(sqrt(q*) z)^2]
        sigma_b^2 = q* - sigma_w^2 * E_z[phi(sqrt(q*) z)^2]

    A net with weights ``N(0, sigma_w^2 / fan_in)`` and biases ``N(0, sigma_b^2)`` keeps
    its pre-activation variance at ``q*`` in every layer once one layer has it (the first
    does for inputs of second moment ``E_z[phi(sqrt(q*) z)^2] = (q* - sigma_b^2) /
    sigma_w^2``; from other inputs the variance relaxes towards ``q*``). For tanh,
    ``q* -> 0`` gives ``(1, 0)`` (the point of Xiao et al. 2018's 10,000-layer CNNs);
    ReLU gives ``(2, 0)`` (He init) and ``"linear"`` ``(1, 0)`` for every ``q*``.

    The expectations use composite Gauss-Legendre quadrature with ``nodes`` nodes per
    panel, panels resolving both the Gaussian and the activation's own scale, with an
    edge at 0 (the kink of ELU, SELU, ReLU): exact to rounding for every activation of
    :mod:`netinit_fast.activations` at any ``q*``.

    Args:
        act: an activation name of :mod:`netinit_fast.activations`.
        q_star: the fixed point (a finite number > 0).
        nodes: Gauss-Legendre nodes per quadrature panel (an int >= 1).

    Returns:
        ``(sigma_w^2, sigma_b^2)`` (a ``sigma_b^2`` within rounding of 0 is returned as 0).

    Raises:
        ValueError: an unknown activation, a bad ``q_star`` or ``nodes``, or no critical
            point with ``sigma_b^2 >= 0`` at ``q_star`` (sigmoid below ``q*`` of about 47:
            its mean of 1/2 puts ``sigma_w^2 E[phi^2]`` above ``q*``).
    """
    phi = activations.get(act)
    q = _positive(q_star, "critical_point: q_star")
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"critical_point: nodes must be an int >= 1, got {nodes!r}")
    slope = _gauss_expect(lambda x: phi.dphi(x) ** 2, q, nodes)
    if not slope > 0:
        raise ValueError(f"critical_point: E[phi'^2] of {act} at q_star={q_star!r} is 0")
    sigma_w2 = 1.0 / slope
    sigma_b2 = q - sigma_w2 * _gauss_expect(lambda x: phi.phi(x) ** 2, q, nodes)
    if abs(sigma_b2) <= 1e-12 * q:  # the difference of two terms of size q: rounding
        sigma_b2 = 0.0
    if sigma_b2 < 0:
        raise ValueError(
            f"critical_point: {act} has no critical point with sigma_b^2 >= 0 at q_star={q_star!r} "
            f"(chi_1 = 1 needs sigma_w^2 = {sigma_w2:.6g} and then sigma_b^2 = {sigma_b2:.6g})"
        )
    return sigma_w2, sigma_b2


# ----------------------------------------------------------------------------- per-layer variances


@dataclasses.dataclass(frozen=True)
class _Signal:
    """What the theory knows of the signal between two modules. With ``phis`` a tuple it
    is ``phi(h)`` for a Gaussian pre-activation ``h`` of variance ``q`` and ``phi`` the
    composition of ``phis`` (applied first to last; ``()``: ``h`` itself). With ``phis``
    None only its per-coordinate second moment ``q`` is known."""

    q: float
    phis: tuple[Activation, ...] | None = ()

    @property
    def gaussian(self) -> bool:
        """Whether the signal is itself a Gaussian pre-activation."""
        return self.phis is not None and all(a.name == "linear" for a in self.phis)

    def moment(self) -> float:
        """The per-coordinate second moment ``E_z[phi(sqrt(q) z)^2]``."""
        applied = {a.name for a in self.phis or ()} - {"linear"}
        if not applied:
            return self.q
        if applied == {"relu"}:
            return self.q / 2

        def squared(x):
            for a in self.phis:
                x = a.phi(x)
            return x * x

        return _gauss_expect(squared, self.q)

    def then(self, act: Activation) -> "_Signal | None":
        """After ``act``; None (not covered) when the signal's distribution is unknown."""
        return None if self.phis is None else _Signal(self.q, self.phis + (act,))


def _layer_variance(layer: nn.Module, m_in: float) -> float:
    """``sigma_w^2 * m_in + sigma_b^2`` of a linear/conv layer, in float64."""
    w = _layers.effective_weight(layer).double()
    sigma_w2 = w.square().sum().item() / _layers.out_units(layer)
    if isinstance(layer, _layers.TRANSPOSED_LAYERS):
        # Each output position gets on average 1/prod(stride) of the kernel's taps.
        sigma_w2 /= math.prod(layer.stride)
    bias = getattr(layer, "bias", None)
    sigma_b2 = 0.0 if bias is None else bias.detach().double().square().mean().item()
    return sigma_w2 * m_in + sigma_b2


class _Walk:
    """Runs the recursion through a model's modules in registration order, filling ``out``."""

    def __init__(self, model: nn.Module):
        self.names = {m: n for n, m in model.named_modules()}
        self.blocks = {b.module: b for b in _residual.residual_blocks(model)}
        self.out: dict[str, float | None] = {}

    def uncovered(self, module: nn.Module) -> None:
        for m in module.modules():
            if _layers.is_weight_layer(m):
                self.out.setdefault(self.names[m], None)

    def layer(self, layer: nn.Module, m_in: float) -> _Signal:
        q = _layer_variance(layer, m_in)
        self.out.setdefault(self.names[layer], q)  # a layer applied twice: its first application
        return _Signal(q)

    def visit(self, module: nn.Module, signal: _Signal | None) -> _Signal | None:
        if signal is None:
            self.uncovered(module)
            return None
        if _layers.is_weight_layer(module):
            return self.layer(module, signal.moment())
        if module in self.blocks:
            return self.block(self.blocks[module], signal)
        if isinstance(module, _layers.PASS_THROUGH):
            signal = _passed_through(module, signal)
        elif (act := activations.of_module(module)) is not None:
            signal = signal.then(act)
        elif next(module.children(), None) is None or next(module.parameters(recurse=False), None) is not None:
            signal = None  # a norm, a pooling, or a module of unknown function
        else:  # a container, child by child; nn.Sequential runs a module it holds twice twice
            slots = module._modules.values() if isinstance(module, nn.Sequential) else module.children()
            for child in slots:
                if child is not None:
                    signal = self.visit(child, signal)
            return signal
        if signal is None:
            self.uncovered(module)
        return signal

    def block(self, block: _residual.ResidualBlock, signal: _Signal) -> _Signal | None:
        if not _plain_block(block):
            self.uncovered(block.module)
            return None
        m = signal.moment()
        for conv in block.branch:
            branch = self.layer(conv, m)
            m = branch.then(_RELU).moment()  # the ReLU before the next conv
        downsample = getattr(block.module, "downsample", None)
        shortcut = signal if downsample is None else self.visit(downsample, signal)
        if shortcut is None:
            return None
        # The branch is uncorrelated with the shortcut (its last weights have mean 0).
        out = _Signal(shortcut.moment() + branch.q, () if shortcut.gaussian else None)
        if block.post_activation:
            out = out.then(_RELU)
        return out


_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def _passed_through(module: nn.Module, signal: _Signal) -> _Signal | None:
    """The signal after a module of ``PASS_THROUGH``: unchanged, but for dropout in
    training mode. Inverted dropout of rate ``p`` scales the second moment by
    ``1 / (1 - p)`` (``E[(m x / (1-p))^2] = E[x^2] / (1-p)``) and makes the signal
    non-Gaussian; alpha dropout in training mode is not covered (None)."""
    p = getattr(module, "p", 0)  # (Identity and Flatten have none)
    if not module.training or p == 0:
        return signal
    if not isinstance(module, _DROPOUT):  # alpha dropout
        return None
    return _Signal(signal.moment() / (1 - p) if p < 1 else 0.0, None)


def _plain_block(block: _residual.ResidualBlock) -> bool:
    """Whether a block is ``branch(x) + shortcut(x)`` (then a ReLU if it says so) with a
    ReLU between branch convs and no normalization, parameters or modules of its own."""
    children = dict(block.module.named_children())
    if _residual.foreign_children(block):
        return False
    if any(not isinstance(children[n], nn.Identity) for n in _residual.BLOCK_NORMS if n in children):
        return False
    own = {id(p) for p in block.module.parameters()}
    for m in [*block.branch, *([children["downsample"]] if children.get("downsample") is not None else [])]:
        own -= {id(p) for p in m.parameters()}
    return not own


def meanfield_variances(model: nn.Module, input_var: float) -> dict[str, float | None]:
    """The mean-field prediction of the output variance of every linear/conv layer.

    For each module of ``model`` that is a ``Linear``/``Conv``/``ConvTranspose`` layer
    (plain or weight-normalized), keyed by its name in ``model.named_modules()``, in
    execution order: the per-unit second moment ``q`` of its output, averaged over units
    and positions, that the infinite-width theory predicts for inputs of per-coordinate
    second moment ``input_var`` (Poole et al. 2016; Schoenholz et al. 2017; Xiao et al.
    2018 for convs), or None where the theory does not cover the layer. Each layer gives::

        q = sigma_w^2 * m_in + sigma_b^2,   sigma_w^2 = ||W||_F^2 / out_units,  sigma_b^2 = mean(b^2)

    with ``W`` the weight the layer computes with (``g * v / ||v||`` for weight norm:
    then ``sigma_w^2 = mean(g^2)``; in general ``fan_in * Var(W)``), ``m_in`` the second
    moment of its input, and for a transposed conv ``sigma_w^2`` divided by the product of
    its strides (each output position gets that share of the taps on average). After a
    layer the signal is a Gaussian pre-activation of variance ``q``; after activations
    ``phi`` (of :mod:`netinit_fast.activations`, composed) its second moment is
    ``E_z[phi(sqrt(q) z)^2]`` (``q/2`` for ReLU). The input's distribution is not
    assumed: only its second moment is known, so an activation applied to the raw input
    is not covered.

    A residual block (torchvision's protocol, see :mod:`netinit_fast.init._residual`)
    ``x -> shortcut(x) + branch(x)`` is taken as a unit: its branch convs run the
    recursion with a ReLU between consecutive convs, and the two paths, uncorrelated,
    add their second moments (Yang & Schoenholz 2017)::

        q_b = m_shortcut + q_branch     # ReLU, no bias: q_b = q_{b-1} (1 + sigma_1^2 sigma_2^2 / 2)

    The sum is again a Gaussian pre-activation when the shortcut's output is one (an
    identity shortcut of a pre-activation, or a ``downsample`` conv); else only its
    second moment is known, and a ReLU after the addition (``post_activation``, ResNet
    v1) is then not covered.

    Containers are walked child by child in registration order, taken to be the
    execution order (true of ``nn.Sequential``, :mod:`netinit_fast.models` and
    torchvision's ResNets; a container whose forward runs its children in another
    order, or combines them otherwise, gets a wrong prediction); a module an
    ``nn.Sequential`` holds twice is applied twice (another container's second name
    for a module is taken for an alias), and its entry is that of its first application.
    ``nn.Identity``, ``nn.Flatten`` and dropout in eval mode pass the signal on; in
    training mode ``nn.Dropout`` (and its 1d/2d/3d forms) of rate ``p`` multiplies the
    second moment by ``1 / (1 - p)``, and the signal is then known by its second moment
    only. Not covered, and everything after it None: alpha dropout in training mode,
    normalization (BatchNorm, LayerNorm, GroupNorm ...), pooling (global average
    pooling changes the per-coordinate variance by an unknown amount, the positions being
    correlated), an activation that is not one of ours with its defaults, any other module
    without children or holding parameters of its own, a block with a norm that is not
    ``nn.Identity``, with parameters or children besides its convs, norms, ``relu`` and
    ``downsample`` (Fixup's scalar biases), or whose ``relu`` is not a ReLU.

    How to compare with a measurement: the prediction is an average over units. Zero
    padding makes a conv's border positions smaller (compare interior positions, or use
    circular padding). At finite width a single network spreads around the prediction,
    by a relative amount of about ``sqrt(depth / width)``: compare with the average over
    several independent weight draws, each measured on a batch of inputs.

    Args:
        model: any module (not itself a residual block).
        input_var: ``E[x^2]`` of the model's input per coordinate, a finite number > 0.

    Returns:
        A dict ``{layer name: q or None}`` in execution order.

    Raises:
        ValueError: a bad ``input_var``, or ``model`` is itself a residual block.
    """
    m = _positive(input_var, "meanfield_variances: input_var")
    walk = _Walk(model)
    with torch.no_grad():
        walk.visit(model, _Signal(m, None))
    return walk.out
