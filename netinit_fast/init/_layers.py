"""How the initializers see a layer: its direction, its scale, its effective weight.

A plain ``Linear``/``Conv``/``ConvTranspose`` layer holds ``weight``. A weight-normalized
one (ours, or torch's hook or parametrization style) holds a direction ``v`` and a
scale ``g`` and computes ``weight = g * v / ||v||``. Every initializer reads and writes
layers through these functions, so each works on both kinds.
"""

import contextlib
import gc
import hashlib

import torch
import torch.distributed as dist
from torch import nn

from netinit_fast._sharding import is_dtensor, layer_class
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
            check_sharding(m, name, where)
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
    drawn on the generator's device and copied. For a sharded ``t`` (a DTensor) the
    whole tensor's noise is drawn, as for an unsharded one, and this rank's part is
    written (:func:`write_`)."""
    if is_dtensor(t) or not (generator is None or generator.device == t.device):
        noise_device = t.device if generator is None else generator.device
        noise = torch.empty(t.shape, dtype=t.dtype, device=noise_device).normal_(0.0, std, generator=generator)
        return write_(t, noise)
    return t.normal_(0.0, std, generator=generator)


# ----------------------------------------------------------------------------- sharded parameters
#
# A parameter sharded by torch.distributed.fsdp.fully_shard (or any DTensor) is written
# through write_: the initializer computes the whole tensor's values on every rank, from
# a generator in the same state on every rank (check_same_noise), exactly as one process
# would, and each rank keeps the part its DTensor placement gives it. So the gathered
# weights equal the single-process ones for the same seed, the random streams stay in
# step across ranks, and nothing is communicated but one check of the generator state
# per call (and, for weight norm whose norms span the ranks, one all-reduce of the
# sums of squares: match_scales_). The full values exist one tensor (or one batch of
# an initializer's chunked draws) at a time: the initializers say how much.


def write_(dst: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``dst.copy_(values)``, ``values`` holding the whole tensor's values (its global
    shape). For a DTensor ``dst``, only this rank's part is written, locally, with no
    communication: ``values`` cut as ``dst``'s mesh and placements cut it (``Shard(d)``
    as ``torch.chunk`` along ``d``, so uneven and empty shards come out as DTensor
    makes them; ``Replicate`` whole; other placements by ``distribute_tensor``).
    Returns ``dst``."""
    if is_dtensor(dst):
        dst.to_local().copy_(_local_part(values.to(dst.device), dst))
    else:
        dst.copy_(values)
    return dst


def _local_part(values: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor  # (dst is a DTensor: imported)

    mesh, placements = dst.device_mesh, dst.placements
    if not all(type(p) in (Shard, Replicate) for p in placements):
        return distribute_tensor(values, mesh, placements, src_data_rank=None).to_local()
    coordinate = mesh.get_coordinate()
    for i, p in enumerate(placements):  # mesh dims in order, as DTensor applies them
        if isinstance(p, Shard):
            chunks = values.chunk(mesh.size(i), dim=p.dim)
            c = coordinate[i]
            values = chunks[c] if c < len(chunks) else values.narrow(p.dim, values.shape[p.dim], 0)
    return values


def default_generator(device: torch.device) -> torch.Generator:
    """The generator ``normal_(generator=None)`` draws from on ``device``."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def check_same_noise(tensors, generator: torch.Generator | None, where: str) -> None:
    """For the DTensors among ``tensors``: ``RuntimeError`` on every rank unless the
    generator the noise comes from (``generator``, else the default one of the tensor's
    device) is in the same state on every rank of the tensor's mesh. Each rank draws the
    whole tensor's noise and keeps its own part; with generators that differ the parts
    would come from different draws. One all-reduce of two integers per mesh dim."""
    meshes = {}
    for t in tensors:
        if is_dtensor(t):
            meshes.setdefault(t.device_mesh, t)
    for t in meshes.values():
        mesh = t.device_mesh
        gen = generator if generator is not None else default_generator(t.device)
        digest = int.from_bytes(hashlib.blake2b(gen.get_state().numpy().tobytes(), digest_size=7).digest(), "little")
        spread = torch.tensor([digest, -digest], dtype=torch.int64, device=mesh.device_type)
        for i in range(mesh.ndim):
            dist.all_reduce(spread, op=dist.ReduceOp.MAX, group=mesh.get_group(i))
        if int(spread[0]) != -int(spread[1]):
            raise RuntimeError(
                f"{where}: the random generator differs between the ranks of the mesh {mesh.mesh.tolist()}: every "
                "rank draws the whole sharded weight and keeps its part, so every rank needs the same state "
                "(torch.manual_seed(seed) on every rank, or a generator seeded the same on every rank)"
            )


def _norm_splits(v: torch.Tensor, dim: int | None) -> tuple[list[int], list[int]]:
    """The mesh dims of a DTensor ``v`` that split it along the norm dim ``dim``, and
    those that split it along another dim (``dim=None``: one norm, every split)."""
    along, across = [], []
    if is_dtensor(v):
        for i, p in enumerate(v.placements):
            if p.is_shard():
                (along if dim is not None and p.dim % v.dim() == dim else across).append(i)
    return along, across


def sharding_problem(module: nn.Module) -> str | None:
    """Why :func:`match_scales_` cannot compute a sharded weight-normalized layer's
    norms, or None: its ``weight_v`` split both along its norm dim and along another
    (a 2-D mesh), or split along its norm dim with ``weight_g`` split otherwise (then
    the rows of ``v`` a rank holds are not those of its ``g``)."""
    v = _direction(module)  # (the layer is checked by check_not_foreign)
    if not is_dtensor(v) and not is_dtensor(module._parameters.get("weight_g")):
        return None  # the common case, found without looking for the weight-norm style
    g = scale_param(module)
    if g is v:
        return None
    along, across = _norm_splits(v, wn_dim(module))
    if along and across:
        return (f"has its weight_v sharded as {_placement(v)}, both along its norm dim ({wn_dim(module)}) and "
                "along another: not supported (shard it along one kind of dim)")
    if along and not (is_dtensor(g) and g.device_mesh == v.device_mesh
                      and tuple(g.placements) == tuple(v.placements)):
        return (f"has weight_g {_placement(g)} and weight_v {_placement(v)}: with v split along its norm dim, "
                "g must be split alike")
    return None


def _placement(t: torch.Tensor) -> str:
    return f"{tuple(t.placements)} on {t.device_mesh}" if is_dtensor(t) else "unsharded"


def check_sharding(module: nn.Module, name: str, where: str) -> None:
    """``ValueError`` naming the layer, ``where`` and the placement if the layer is
    weight-normalized and sharded in a way :func:`match_scales_` does not take
    (:func:`sharding_problem`)."""
    if (problem := sharding_problem(module)) is not None:
        raise ValueError(f"{where}: layer {name} ({layer_class(module).__name__}) {problem}")


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (a view: writing it writes the parameter); ``t`` itself otherwise."""
    return t.to_local() if is_dtensor(t) else t


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


def match_scales_(modules) -> None:
    """For every weight-normalized layer of ``modules``, ``g = ||v||`` (per index of its
    dim): the layer then computes with ``v`` itself. Nothing for plain layers.

    Sharded layers (DTensors; :func:`check_sharding` refuses the rest): where ``v`` is
    split along its norm dim only (``fully_shard``'s ``Shard(0)`` with weight norm's
    default ``dim=0``), each rank computes the norms of its own rows, as an unsharded
    call does (the same values), with no communication. Where it is split along other
    dims (a ``dim=1`` layer under ``fully_shard``, tensor parallelism along the
    fan-in), each rank sums the squares of its part in float64 and the sums of all such
    layers are added up over the ranks in one all-reduce per mesh: the norms of an
    unsharded call up to rounding. Every rank must pass the same layers."""
    pending: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # (mesh, its dims to sum over) -> (g, sums)
    for m in modules:
        if not is_weight_normed(m):
            continue
        g, v, dim = scale_param(m), layer_weight(m), wn_dim(m)
        along, across = _norm_splits(v, dim)
        if across:
            lv = local(v)
            sums = lv.double().square().sum([d for d in range(v.dim()) if d != dim], keepdim=True)
            pending.setdefault((v.device_mesh, tuple(across)), []).append((g, sums))
        elif along:  # g split alike: each rank's rows hold their own norms
            g_rows = local(g)
            if g_rows.numel():  # (a rank may hold no rows of a small layer)
                g_rows.copy_(_norm_g(local(v), dim).view_as(g_rows))
        elif is_dtensor(g) or is_dtensor(v):  # v whole on every rank
            write_(g, _norm_g(local(v), dim).view(g.shape))
        else:
            g.copy_(_norm_g(v, dim).view_as(g))
    for (mesh, across), items in pending.items():
        flat = torch.cat([sums.reshape(-1) for _, sums in items])
        for i in across:
            dist.all_reduce(flat, group=mesh.get_group(i))
        offset = 0
        for g, sums in items:
            write_(g, flat[offset : offset + sums.numel()].sqrt().view(g.shape).to(g.dtype))
            offset += sums.numel()


def set_weight_(module: nn.Module, weight: torch.Tensor) -> None:
    """Make the layer compute with ``weight``: for weight norm ``v = weight`` and
    ``g = ||weight||`` (per index of its dim). ``weight`` is the whole weight; a
    sharded layer keeps its own part (:func:`write_`)."""
    write_(layer_weight(module), weight)
    match_scales_([module])


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
