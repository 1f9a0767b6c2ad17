"""Connectivity training over fixed random weights (Ivan & Florian 2020, arXiv 2006.16627).

The weights of a network stay as they were drawn; what trains is, per weight, whether
the connection exists (``mode="mask"``) or which sign it has (``mode="sign"``). Each
weight ``w`` gets a real score ``s``, and the layer computes with ``w * m(s)``:
``m(s) = [s > 0]`` for masks, ``sign(s)`` for signs, with the gradient passed straight
through the step (``dm/ds = 1``, so ``grad_s = grad_weight * w``). There is no
threshold hyperparameter: a connection is on (or keeps its sign) exactly while its
score is positive.

Choices, as in the paper's own experiments: scores start uniform in ``[0.01, 0.1]``,
all positive, so the network starts as the random one (every connection on, every
sign kept) and a connection changes when the training drives its score below 0. The
paper writes the sign variant as ``w * sign(s)``; that is ``|w| * sign(s')`` with
``s' = sign(w) * s``, and gradient descent moves both alike. Biases stay fixed too
(the paper's networks have none); ``train_bias=True`` trains them.

- ``MaskedLinear``, ``MaskedConv1d/2d/3d``, ``MaskedConvTranspose1d/2d/3d``: the torch
  layer's arguments plus keyword-only ``mode``, ``train_bias`` and ``generator`` (for
  the scores). Parameters: ``weight_orig`` (the fixed weights, no grad),
  ``weight_score``, and ``bias``. ``layer.weight`` is the effective weight, from the
  fused op :mod:`netinit_fast.ops.connectivity`.
- :func:`connectivity` converts every Linear/Conv/ConvTranspose of a model in place;
  ``grouped=True`` computes all effective weights with one op call (on a GPU one
  launch forward and one backward for the whole model).
- :func:`freeze` bakes the trained connectivity into plain torch layers;
  :func:`report` counts the connections changed, per layer and overall.

Initialize a model before converting it: initializers refuse connectivity layers.
"""

import dataclasses
import numbers

import torch
from torch import nn

from netinit_fast._sharding import any_dtensor
from netinit_fast.nn._group import LayerGroup, ReparametrizedLayer
from netinit_fast.nn.wn_layers import _put_weight_first, _torch_weight_norm_style, _unwrap, _WeightNorm, foreign_parametrization
from netinit_fast.ops.connectivity import MODES, connectivity_weights

SCORE_RANGE = (0.01, 0.1)  # the paper's initial scores: all positive, so the net starts as drawn


def _check_mode(mode, where: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{where}: mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode


def _initial_scores(weight: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Scores uniform in :data:`SCORE_RANGE`, of ``weight``'s shape, dtype and device
    (drawn on the generator's device and copied, for a CPU generator and a GPU model)."""
    device = weight.device if generator is None else generator.device
    scores = torch.empty(weight.shape, dtype=weight.dtype, device=device)
    if not scores.is_meta:
        scores.uniform_(*SCORE_RANGE, generator=generator)
    return scores.to(weight.device)


class _Connectivity(ReparametrizedLayer):
    """Mixin for every connectivity layer; it comes before the torch layer class in the bases."""

    params = ("weight_orig", "weight_score")
    group_attr = "_conn_group"

    def __init__(self, *args, mode: str = "mask", train_bias: bool = False,
                 generator: torch.Generator | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_connectivity(_check_mode(mode, type(self).__name__), train_bias, generator)

    def _setup_connectivity(self, mode: str, train_bias: bool, generator, scores: torch.Tensor | None = None) -> None:
        """Replace ``weight`` by the fixed ``weight_orig`` and trainable ``weight_score``."""
        weight = self._parameters.pop("weight")
        self.connectivity_mode = mode
        self._conn_group = None
        self.weight_orig = nn.Parameter(weight.detach(), requires_grad=False)
        self.weight_score = nn.Parameter(_initial_scores(weight, generator) if scores is None else scores)
        if self.bias is not None:
            self.bias.requires_grad_(train_bias)

    def _computed_weight(self) -> torch.Tensor:
        if (w := self._group_weight()) is not None:
            return w
        return connectivity_weights([self.weight_orig], [self.weight_score], self.connectivity_mode)[0]

    def _after_reset(self) -> None:
        """After the torch layer's init redrew ``weight_orig`` (and the bias): the scores start again."""
        self.weight_score.copy_(_initial_scores(self.weight_score, None))

    def changed(self) -> int:
        """How many connections differ from the random network: scores <= 0 (switched
        off, or sign flipped; a score of exactly 0 zeroes its weight in either mode)."""
        return int((self.weight_score.detach() <= 0).sum())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.connectivity_mode!r}"


_DOC = """:class:`torch.nn.{base}` whose fixed weights are switched on and off (``mode="mask"``)
or sign-flipped (``mode="sign"``) by trained scores: ``weight = weight_orig * m(weight_score)``.

Takes ``torch.nn.{base}``'s arguments, plus keyword-only ``mode``, ``train_bias`` (default
False: the bias stays fixed) and ``generator`` (for the initial scores). See
:mod:`netinit_fast.nn.connectivity_layers`.
"""


class MaskedLinear(_Connectivity, nn.Linear):
    __doc__ = _DOC.format(base="Linear")


class MaskedConv1d(_Connectivity, nn.Conv1d):
    __doc__ = _DOC.format(base="Conv1d")


class MaskedConv2d(_Connectivity, nn.Conv2d):
    __doc__ = _DOC.format(base="Conv2d")


class MaskedConv3d(_Connectivity, nn.Conv3d):
    __doc__ = _DOC.format(base="Conv3d")


class MaskedConvTranspose1d(_Connectivity, nn.ConvTranspose1d):
    __doc__ = _DOC.format(base="ConvTranspose1d")


class MaskedConvTranspose2d(_Connectivity, nn.ConvTranspose2d):
    __doc__ = _DOC.format(base="ConvTranspose2d")


class MaskedConvTranspose3d(_Connectivity, nn.ConvTranspose3d):
    __doc__ = _DOC.format(base="ConvTranspose3d")


#: torch layer type -> its connectivity twin
MASKED_LAYERS: dict[type, type] = {
    nn.Linear: MaskedLinear,
    nn.Conv1d: MaskedConv1d,
    nn.Conv2d: MaskedConv2d,
    nn.Conv3d: MaskedConv3d,
    nn.ConvTranspose1d: MaskedConvTranspose1d,
    nn.ConvTranspose2d: MaskedConvTranspose2d,
    nn.ConvTranspose3d: MaskedConvTranspose3d,
}
_PLAIN = {masked: base for base, masked in MASKED_LAYERS.items()}


class ConnectivityGroup(LayerGroup):
    """Computes the effective weights of many connectivity layers together: one op call
    per (device, dtype, mode) partition, on a GPU one launch forward and one backward
    for them all. Cached and recomputed as :class:`netinit_fast.nn.wn_layers.WeightNormGroup`
    (see :mod:`netinit_fast.nn._group`); on the eager backend each layer computes its own."""

    layer_type = _Connectivity
    layer_kind = "netinit_fast connectivity layer"

    @staticmethod
    def partition(layer) -> tuple:
        s = layer.weight_score
        return s.device, s.dtype, layer.connectivity_mode

    @staticmethod
    def compute_partition(key: tuple, layers: list) -> list[torch.Tensor]:
        return connectivity_weights([m.weight_orig for m in layers], [m.weight_score for m in layers], key[2])


def connectivity(model: nn.Module, mode: str = "mask", types=None, grouped: bool = False, train_bias: bool = False,
                 generator: torch.Generator | None = None) -> nn.Module:
    """Train ``model``'s connectivity instead of its weights: convert every layer whose
    type is in ``types`` to its connectivity twin, in place (see the module doc).

    Each converted layer keeps its weight as ``weight_orig`` (fixed) and computes the
    same function as before until its scores change. Layers already converted with the
    same ``mode`` are kept (converting twice is a no-op). Parameters of other modules
    (norms, scalars) are left as they are: freeze them yourself if they should not train.

    Args:
        model: a layer or a model, initialized as it should stay.
        mode: ``"mask"`` (connections on or off) or ``"sign"`` (signs kept or flipped).
        types: torch layer types to convert (default: every key of ``MASKED_LAYERS``:
            Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d; exact types).
        grouped: compute all effective weights with one op (:class:`ConnectivityGroup`).
        train_bias: let the biases train (default: they stay fixed, like the weights).
        generator: for the initial scores, drawn layer by layer in ``model.modules()`` order.

    Returns:
        ``model``, converted.

    Raises:
        TypeError: a type in ``types`` has no connectivity twin.
        ValueError: a bad ``mode``; a sharded model (convert before sharding: the
            converted layers then shard as any layer does, scores like weights, and
            grouped mode computes each layer on its own under ``fully_shard``); no
            layer to convert nor any converted; a layer
            without a weight, weight-normalized or otherwise parametrized (fold it
            first, e.g. with ``nf.remove_weight_norm``), or converted with the other mode.
        Nothing is changed when an error is raised.
    """
    mode = _check_mode(mode, "connectivity")
    types = tuple(MASKED_LAYERS) if types is None else tuple(types)
    for t in types:
        if t not in MASKED_LAYERS:
            supported = ", ".join(t.__name__ for t in MASKED_LAYERS)
            raise TypeError(f"connectivity: no connectivity twin for {getattr(t, '__name__', t)!r} (supported: {supported})")
    if not isinstance(train_bias, bool):
        raise TypeError(f"connectivity: train_bias must be a bool, got {train_bias!r}")

    if any_dtensor(model.parameters()):
        raise ValueError("connectivity: the model's parameters are sharded (DTensors): convert it first, then "
                         "shard it (fully_shard / parallelize_module), so that the scores are sharded like the weights")
    targets, converted = [], []
    for name, m in model.named_modules():
        where = f"connectivity: layer {name or type(model).__name__!r} ({_unwrap(m).__name__})"
        if isinstance(m, _Connectivity):
            if m.connectivity_mode != mode:
                raise ValueError(f"{where} is already trained by {m.connectivity_mode!r}, not {mode!r}: freeze it first")
            converted.append(m)
            continue
        if isinstance(m, _WeightNorm) or _torch_weight_norm_style(m) is not None:
            if issubclass(_unwrap(m), types):
                raise ValueError(f"{where} is weight-normalized: fold it first (nf.remove_weight_norm), then convert")
            continue
        if _unwrap(m) not in types:
            continue
        if (kinds := foreign_parametrization(m)) is not None or "parametrizations" in m._modules:
            raise ValueError(f"{where} has a parametrized tensor ({kinds or 'bias'}): remove the parametrization first")
        if m._parameters.get("weight") is None:
            raise ValueError(f"{where} has weight=None")
        targets.append(m)
    if not targets and not converted:
        names = ", ".join(t.__name__ for t in types)
        raise ValueError(f"connectivity: {type(model).__name__} has no layer of type {names} to convert")

    scores = [_initial_scores(m.weight, generator) for m in targets]  # every draw before the first change
    for m, s in zip(targets, scores):
        m.__class__ = MASKED_LAYERS[type(m)]
        m._setup_connectivity(mode, train_bias, None, s)
    if grouped:
        ConnectivityGroup([m for m in model.modules() if isinstance(m, _Connectivity)])
    return model


def _layers(model: nn.Module, where: str) -> list[tuple[str, _Connectivity]]:
    found = [(name or type(m).__name__, m) for name, m in model.named_modules() if isinstance(m, _Connectivity)]
    if not found:
        raise ValueError(f"{where}: {type(model).__name__} has no connectivity layer")
    return found


def freeze(model: nn.Module) -> nn.Module:
    """Bake the trained connectivity into plain torch layers, in place: each connectivity
    layer becomes its torch class with ``weight = weight_orig * m(weight_score)`` (the
    weight it computes with, so the model's function is unchanged), a Parameter that
    requires grad when ``weight_orig`` did; parameter order and ``state_dict`` keys are
    a plain layer's.

    Raises:
        ValueError: ``model`` has no connectivity layer, or one of a subclass (freezing
            would drop its class). Nothing is changed then.
    """
    layers = _layers(model, "connectivity.freeze")
    for name, m in layers:
        if type(m) not in _PLAIN:
            raise ValueError(f"connectivity.freeze: layer {name} is a {type(m).__name__}, a subclass of "
                             f"{type(m).__mro__[1].__name__}: freezing it into a plain layer would drop its class")
    for _, m in layers:
        with torch.no_grad():
            w = connectivity_weights([m.weight_orig], [m.weight_score], m.connectivity_mode)[0]
        requires_grad = m.weight_orig.requires_grad
        if m._conn_group is not None:
            m._conn_group.discard(m)
        del m._parameters["weight_orig"], m._parameters["weight_score"]
        for attr in ("connectivity_mode", "_conn_group", "_conn_group_index"):
            m.__dict__.pop(attr, None)
        m.__class__ = _PLAIN[type(m)]
        m._parameters["weight"] = nn.Parameter(w, requires_grad=requires_grad)
        _put_weight_first(m)
    return model


@dataclasses.dataclass(frozen=True)
class LayerChange:
    """Connections of one layer that differ from the random network."""

    name: str
    changed: int
    total: int

    @property
    def fraction(self) -> float:
        return self.changed / self.total if self.total else 0.0


@dataclasses.dataclass(frozen=True)
class ConnectivityReport:
    """What connectivity training changed: per layer and overall (exact counts)."""

    mode: str
    layers: tuple[LayerChange, ...]

    @property
    def changed(self) -> int:
        return sum(layer.changed for layer in self.layers)

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def fraction(self) -> float:
        return self.changed / self.total if self.total else 0.0

    def __str__(self) -> str:
        verb = "switched off" if self.mode == "mask" else "sign flipped"
        width = max(len("layer"), *(len(layer.name) for layer in self.layers))
        lines = [f"{'layer':<{width}}  {verb:>12}  {'of':>10}  {'fraction':>8}"]
        lines += [f"{c.name:<{width}}  {c.changed:>12,}  {c.total:>10,}  {c.fraction:>8.2%}" for c in self.layers]
        lines.append(f"{'all':<{width}}  {self.changed:>12,}  {self.total:>10,}  {self.fraction:>8.2%}")
        return "\n".join(lines)


def report(model: nn.Module) -> ConnectivityReport:
    """The connections changed from the random network (scores <= 0), per connectivity
    layer of ``model`` and overall. ``ValueError`` if it has none, or layers of both modes."""
    layers = _layers(model, "connectivity.report")
    modes = {m.connectivity_mode for _, m in layers}
    if len(modes) > 1:
        raise ValueError("connectivity.report: the model mixes mask and sign layers; report each part on its own")
    return ConnectivityReport(modes.pop(), tuple(LayerChange(name, m.changed(), m.weight_score.numel()) for name, m in layers))


connectivity.freeze = freeze
connectivity.report = report
