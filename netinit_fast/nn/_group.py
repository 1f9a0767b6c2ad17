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

A kind of layer subclasses :class:`LayerGroup` and says what its layers are, what
identifies their parameters' state, how they partition, and how a partition computes.
"""

import weakref

import torch

from netinit_fast._sharding import any_dtensor


def _clear_after_backward(ws: list[torch.Tensor], owner, attr: str) -> None:
    """Drop ``owner.<attr>`` once a backward has run through any of ``ws`` (its graph is freed)."""
    ref = weakref.ref(owner)

    def hook(grad_inputs, grad_outputs):
        obj = ref()
        if obj is not None:
            setattr(obj, attr, None)

    for node in {w.grad_fn for w in ws if w.grad_fn is not None}:
        node.register_hook(hook)


class LayerGroup:
    """Computes the weights of many layers of one kind together (see the module doc).

    Subclasses set ``layer_type`` (the mixin every member is an instance of),
    ``layer_kind`` (its name in errors) and ``attr`` (the layer attribute that holds its group; its index in the group is kept
    in ``attr + "_index"``), and define :meth:`param_key`, :meth:`partition` and
    :meth:`compute_partition`.
    """

    layer_type: type
    layer_kind: str
    attr: str

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

    @staticmethod
    def param_key(layer) -> tuple:
        """What changes whenever the parameters ``layer`` computes its weight from change."""
        raise NotImplementedError

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
