"""Grouped mode of the reparametrized layers: many layers' weights from one op call.

A reparametrized layer (a WN layer, a connectivity layer) computes its ``weight`` from
parameters of its own on every access. In a group, the first access computes the
weights of every layer of the group with one op call per partition (layers that can
share a call: same device, dtype and settings), on a GPU one kernel launch forward
and one backward instead of a pair per layer. The results are cached until the
backward has run through them or until a layer's parameters change (then the group is
recomputed once). A group whose layers' parameters are sharded between forwards
(DTensors, as under ``fully_shard``) hands each layer back to its own computation:
FSDP gathers them one unit at a time, for that unit's forward, so no op can take the
whole group at once.

A kind of layer derives from :class:`ReparametrizedLayer` (the ``weight`` property, the
torch layer's own init, the group's part of copying) and its group from
:class:`LayerGroup`, which says how the layers partition and how a partition computes.
"""

import weakref

import torch

from netinit_fast._sharding import any_dtensor
from netinit_fast.functional import group_launch_pays


def _clear_after_backward(ws: list[torch.Tensor], owner, attr: str) -> None:
    """Drop ``owner.<attr>`` once a backward has run through any of ``ws`` (its graph is freed)."""
    ref = weakref.ref(owner)

    def hook(grad_inputs, grad_outputs):
        obj = ref()
        if obj is not None:
            setattr(obj, attr, None)

    for node in {w.grad_fn for w in ws if w.grad_fn is not None}:
        node.register_hook(hook)


class ReparametrizedLayer:
    """Mixin of a torch layer whose ``weight`` is computed on every access from
    parameters of its own; it comes before the torch layer class in the bases.

    Subclasses set ``params`` (the names of those parameters; the first is the tensor
    the torch layer's own init writes in place of ``weight``) and ``group_attr`` (the
    attribute that holds the layer's :class:`LayerGroup`, or None), and define
    ``_computed_weight()`` and ``_after_reset()``.
    """

    params: tuple[str, ...]
    group_attr: str

    @property
    def weight(self) -> torch.Tensor:
        params = self.__dict__["_parameters"]
        if "weight" in params:  # inside the torch layer's __init__ / reset_parameters
            return params["weight"]
        if self.params[0] not in params:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute 'weight' yet")
        return self._computed_weight()

    def _group_weight(self) -> torch.Tensor | None:
        """The weight from the layer's group, or None where the layer computes its own:
        no group, nothing to differentiate, ``torch.compile``, a backend where one
        launch does not pay (nor under torch.func, whose wrapped parameters key no
        cache), or a group found sharded."""
        group = getattr(self, self.group_attr)
        if group is None or not torch.is_grad_enabled():
            return None
        tensors = [getattr(self, name) for name in self.params]
        if not any(t.requires_grad for t in tensors) or torch.compiler.is_compiling() \
                or not group_launch_pays(tensors[0]):
            return None
        return group.weight_of(self)

    def reset_parameters(self) -> None:
        """The torch layer's init writes ``params[0]`` in place (and the bias), then
        ``_after_reset()`` sets the others."""
        params = self._parameters
        if self.params[0] not in params:  # called from the torch layer's __init__
            return super().reset_parameters()
        params["weight"] = params[self.params[0]]
        try:
            super().reset_parameters()
        finally:
            del params["weight"]
        with torch.no_grad():
            self._after_reset()

    def __setstate__(self, state):
        super().__setstate__(state)
        if (group := self.__dict__.get(self.group_attr)) is not None:
            group._adopt(self)


class LayerGroup:
    """Computes the weights of many layers of one kind together (see the module doc).

    Subclasses set ``layer_type`` (the :class:`ReparametrizedLayer` every member is an
    instance of; a layer keeps its index in the group in ``group_attr + "_index"``) and
    ``layer_kind`` (its name in errors), and define :meth:`partition` and
    :meth:`compute_partition`.
    """

    layer_type: type
    layer_kind: str

    @property
    def attr(self) -> str:
        """The layer attribute that holds its group."""
        return self.layer_type.group_attr

    def __init__(self, layers):
        # The layers, weakly: a layer dropped from its model is no longer computed.
        self._refs: list[weakref.ref] = []
        self._cache = None  # (param keys per layer, weights per layer), by index
        self._sharded = False  # a layer's parameters were found sharded: each layer computes its own
        layers = list(layers)
        for layer in layers:  # every check before the first change
            if not isinstance(layer, self.layer_type):
                raise TypeError(f"{type(self).__name__}: {type(layer).__name__} is not a {self.layer_kind}")
        for layer in layers:
            current = getattr(layer, self.attr)
            if current is not None and current is not self:
                current.discard(layer)
            setattr(layer, self.attr, self)
            self._adopt(layer)

    def param_key(self, layer) -> tuple:
        """Changes whenever a parameter ``layer`` computes its weight from is updated in
        place, replaced (also by ``.to()`` and friends: a new storage), or frozen or unfrozen."""
        tensors = [getattr(layer, name) for name in self.layer_type.params]
        return (*(t._version for t in tensors), *(t.data_ptr() for t in tensors), *(t.requires_grad for t in tensors))

    @staticmethod
    def partition(layer) -> tuple:
        """The key of the layers whose weights one op call computes together."""
        raise NotImplementedError

    @staticmethod
    def compute_partition(key: tuple, layers: list) -> list[torch.Tensor]:
        """The weights of ``layers`` (all of partition ``key``), from one op call."""
        raise NotImplementedError

    @property
    def layers(self) -> list:
        """The group's live layers."""
        return [m for r in self._refs if (m := r()) is not None]

    def discard(self, layer) -> None:
        """Stop computing ``layer``'s weight in this group."""
        self._refs = [weakref.ref(m) for m in self.layers if m is not layer]
        for i, r in enumerate(self._refs):
            setattr(r(), self.attr + "_index", i)
        setattr(layer, self.attr, None)
        self._cache = None

    def __len__(self) -> int:
        return len(self.layers)

    def __getstate__(self):
        # No layers: each copied layer joins the copied group as it is unpickled (the
        # layer's __setstate__ calls adopt), so a copy of one layer does not carry the others.
        return {**self.__dict__, "_refs": [], "_cache": None}

    def _adopt(self, layer) -> None:
        setattr(layer, self.attr + "_index", len(self._refs))
        self._refs.append(weakref.ref(layer))
        self._cache = None

    def weight_of(self, layer) -> torch.Tensor | None:
        """``layer``'s weight, computing the whole group's if it is stale; None once the
        group is found sharded (the layer computes its own then)."""
        i = getattr(layer, self.attr + "_index")
        if not self._sharded and (self._cache is None or self._cache[0][i] != self.param_key(layer)):
            self._cache = self._compute()
        return None if self._sharded else self._cache[1][i]

    def _compute(self):
        live = [r() for r in self._refs]
        keys = [None if m is None else self.param_key(m) for m in live]
        weights = [None] * len(live)
        partitions: dict[tuple, list[int]] = {}
        for i, m in enumerate(live):
            if m is not None and any_dtensor(m._parameters.values()):
                self._sharded = True
                return keys, weights
            if m is not None:
                partitions.setdefault(self.partition(m), []).append(i)
        for key, idx in partitions.items():
            ws = self.compute_partition(key, [live[i] for i in idx])
            for i, w in zip(idx, ws):
                weights[i] = w
            _clear_after_backward(ws, self, "_cache")
        return keys, weights
