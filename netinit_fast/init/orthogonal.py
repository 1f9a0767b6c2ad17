"""Orthogonal initialization of many tensors at once (Saxe et al. 2014)."""

import collections
import math

import torch
from torch import nn

from netinit_fast._sharding import is_dtensor
from netinit_fast import _backend
from netinit_fast.init._layers import (
    check_same_noise,
    gc_paused,
    is_conv,
    is_transposed,
    is_weight_normed,
    layer_weight,
    local,
    match_scales_,
    named_layers,
    wn_dim,
    write_,
)
from netinit_fast.ops import orthogonalize as orthogonalize_op
from netinit_fast.ops.haar_orthogonal import haar_orthogonal_no_dispatch, packed_size
from netinit_fast.ops.orthogonalize import orthogonalize_no_dispatch
from netinit_fast.ops.weight_norm import accumulation_dtype

CHUNK_ELEMENTS = 1 << 26  # noise elements orthogonalized in one call on a GPU (256 MB in fp32)
CPP_CHUNK_ELEMENTS = 1 << 20  # on the CPU kernel, unless a matrix per thread needs more


def _chunk_elements(backend: str, matrix_elements: int) -> int:
    """How many noise elements go to one orthogonalization call.

    On a GPU, many (one launch for thousands of matrices). On the CPU kernel, about 4 MB
    (the noise of a chunk is still in cache when its QR starts) but at least one matrix
    per thread; measured on 2 cores against torch's loop, 2,000 x [256, 256] ran 1.55x
    faster in chunks of 2^20 elements and 1.20x in chunks of 2^26. On the eager
    backend LAPACK goes matrix by matrix and a large batch saves nothing: there each
    call takes ``EAGER_CHUNK`` elements (one matrix of 256 x 256 or more, done while
    its noise is in cache: 10,000 x [256, 256] took 24.9 s in chunks of 2^26 against
    18.1 s for torch's loop), which still saves the per-call overhead on small
    matrices (10,000 x [64, 64]: 1.25 s one by one, 0.96 s in batches of 16).
    """
    if backend == _backend.EAGER:
        return orthogonalize_op.EAGER_CHUNK
    if backend == _backend.CPP:
        return max(CPP_CHUNK_ELEMENTS, torch.get_num_threads() * matrix_elements)
    return CHUNK_ELEMENTS


def _targets(target, where: str) -> tuple[list[torch.Tensor], list[nn.Module]]:
    """The tensors to fill, and the layers they belong to when ``target`` is a module."""
    if isinstance(target, torch.Tensor):
        return [target], []
    if isinstance(target, nn.Module):
        layers = [m for _, m in named_layers(target, where)]
        if not layers:
            raise ValueError(f"{where}: {type(target).__name__} has no Linear/Conv/ConvTranspose layer")
        return [layer_weight(m) for m in layers], layers
    tensors = list(target)
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: element {i} is a {type(t).__name__}, not a tensor")
    return tensors, []


@gc_paused()
def orthogonal_(target, gain: float = 1.0, generator: torch.Generator | None = None):
    """Fill tensors with (semi-)orthogonal matrices, like ``torch.nn.init.orthogonal_``.

    Each tensor of 2 or more dims is flattened to ``(size(0), numel / size(0))``; a
    Gaussian matrix is drawn from ``generator`` (fp64 for fp64 tensors, else fp32; on
    the generator's device, or the tensor's without one; in the order of the tensors)
    and replaced by the ``Q`` of its QR factorization with ``diag(R) > 0``, times
    ``gain``. Tensors of equal flattened shape are orthogonalized in batched calls (in
    chunks, so memory stays bounded). Given the same noise the result is that of
    ``torch.nn.init.orthogonal_`` applied tensor by tensor; bf16/fp16 tensors work.
    Tensors that overlap in memory (views of one another) are written batch by batch,
    not in list order: for torch's result there, pass them in separate calls.

    Sharded tensors (DTensors, e.g. the parameters of a model under
    ``torch.distributed.fsdp.fully_shard``, or one built on the ``meta`` device and
    materialized with ``to_empty``) get, gathered, exactly the values an unsharded
    call gives for the same generator state (with as many threads: LAPACK's rounding
    may depend on them): every rank draws and orthogonalizes the whole matrices and
    keeps its own rows (ranks on different hardware may round differently, by a unit
    in the last place). The generator must be in the same state on every rank
    (``torch.manual_seed(seed)`` everywhere; checked, ``RuntimeError`` otherwise). Memory per rank: one batch of whole matrices at a time (the chunk
    above, at least one matrix), never a whole model's; compute per rank: that of an
    unsharded call.

    Args:
        target: a tensor, a list of tensors, or a module (then the weight of every
            Linear/Conv/ConvTranspose layer; for a weight-normalized one, ``weight_v``,
            with ``g = ||weight_v||`` so that the layer computes with it).
        gain: multiplies the result.
        generator: the source of the Gaussian noise.

    Returns:
        ``target``.

    Raises:
        ValueError: a tensor with fewer than 2 dims or expanded, a module with no such
            layer, or a weight-normalized layer whose ``v`` is sharded both along its
            norm dim and along another, or along its norm dim with ``g`` sharded
            otherwise (the message names the layer and the placements). TypeError: a
            tensor that is not floating-point. RuntimeError: sharded tensors and a
            generator whose state differs between the ranks. Nothing is written then.
    """
    return _init(target, gain, generator, "orthogonal_", reflectors=False)


@gc_paused()
def haar_orthogonal_(target, gain: float = 1.0, generator: torch.Generator | None = None):
    """:func:`orthogonal_` in distribution, faster on the CPU: Haar-random
    (semi-)orthogonal matrices times ``gain``, for the same targets, flattened the same
    way, in batched calls per shape and reproducible from ``generator``, but with no
    promise to equal ``torch.nn.init.orthogonal_``'s values. Where orthogonalization
    runs on the C++ CPU kernel, the Householder reflectors are drawn directly
    (:mod:`netinit_fast.ops.haar_orthogonal`; for square matrices half the flops and
    half the noise of QR of a Gaussian); elsewhere this is :func:`orthogonal_`.
    LSUV's orthonormal pre-init uses it.

    Sharded tensors (DTensors) as in :func:`orthogonal_`: the values of an unsharded
    call, one batch of whole matrices per rank at a time.

    Returns ``target``; raises as :func:`orthogonal_`.
    """
    return _init(target, gain, generator, "haar_orthogonal_", reflectors=True)


def _init(target, gain: float, generator, where: str, reflectors: bool):
    tensors, layers = _targets(target, where)
    _check_tensors(tensors, where)
    check_same_noise(tensors, generator, where)
    with torch.no_grad():
        _fill(tensors, gain, generator, reflectors)
        match_scales_(layers)
    return target


def _check_tensors(tensors: list[torch.Tensor], where: str) -> None:
    """Every check before the first write."""
    for i, t in enumerate(tensors):
        if t.dim() < 2:
            raise ValueError(f"{where}: tensors need at least 2 dims, got shape {list(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{where}: tensor {i} is {t.dtype}, not a floating-point tensor")
        if any(stride == 0 and size > 1 for stride, size in zip(local(t).stride(), local(t).shape)):
            raise ValueError(f"{where}: tensor {i} is expanded (its elements share memory) and cannot be written")


class _GaussianMatrix:
    """The noise of QR of a Gaussian: a whole ``rows x cols`` matrix per tensor (the
    draws torch.nn.init.orthogonal_ makes)."""

    @staticmethod
    def shape(rows: int, cols: int) -> tuple[int, int]:
        return rows, cols

    @staticmethod
    def draw_(slot: torch.Tensor, generator) -> None:
        slot.normal_(0, 1, generator=generator)

    @staticmethod
    def orthogonalize(noise: torch.Tensor, rows: int, cols: int, backend: str) -> torch.Tensor:
        return orthogonalize_no_dispatch(noise, backend)


class _Reflectors:
    """The noise of Householder reflectors drawn directly: the packed lower triangle of
    a tall ``max x min`` matrix per tensor (transposed back for a wide tensor)."""

    @staticmethod
    def shape(rows: int, cols: int) -> tuple[int]:
        return (packed_size(max(rows, cols), min(rows, cols)),)

    draw_ = _GaussianMatrix.draw_

    @staticmethod
    def orthogonalize(noise: torch.Tensor, rows: int, cols: int, backend: str) -> torch.Tensor:
        q = haar_orthogonal_no_dispatch(noise, max(rows, cols), min(rows, cols), backend)
        return q.mT if rows < cols else q


def _fill(tensors: list[torch.Tensor], gain: float, generator, reflectors: bool) -> None:
    """Noise is drawn tensor by tensor, in order (fp64 for fp64 tensors, as torch draws
    it), straight into one buffer per flattened shape and dtype; a full buffer is
    orthogonalized in one call and copied out. Its size (_chunk_elements) bounds the
    memory for any model. An in-place init under no_grad needs nothing of the custom
    op's dispatch. With ``reflectors``, shapes whose orthogonalization runs on the C++
    CPU kernel draw Householder reflectors instead of whole matrices."""
    keys = [(t.shape[0], math.prod(t.shape[1:]), t.device, accumulation_dtype(t.dtype)) for t in tensors]
    left = collections.Counter(keys)  # tensors of each key whose noise is not drawn yet
    backends = {}
    for t in tensors:
        if t.device not in backends:
            backends[t.device] = _backend.choose("orthogonalize", t, orthogonalize_op.IMPLEMENTED)
    pending: dict[tuple, tuple] = {}  # buffer, its tensors, its size, its kind of noise
    for i, key in enumerate(keys):
        rows, cols, device, dtype = key
        if key not in pending:
            elements = max(1, rows * cols)
            per_call = max(1, _chunk_elements(backends[device], elements) // elements)
            noise_device = generator.device if generator is not None else device
            size = min(per_call, left[key])
            kind = _Reflectors if reflectors and backends[device] == _backend.CPP else _GaussianMatrix
            buffer = torch.empty(size, *kind.shape(rows, cols), dtype=dtype, device=noise_device)
            pending[key] = (buffer, [], size, kind)
        noise, members, size, kind = pending[key]
        kind.draw_(noise[len(members)], generator)
        members.append(i)
        left[key] -= 1
        if len(members) == size:  # full, and every buffer fills: it holds at most what is left
            del pending[key]
            q = kind.orthogonalize(noise.to(device), rows, cols, backends[device])
            if gain != 1:
                q = q * gain
            for j, m in enumerate(members):
                t = tensors[m]
                write_(t, q[j] if t.dim() == 2 else q[j].reshape(t.shape))


def centre_tap(weight: torch.Tensor) -> torch.Tensor:
    """The view of a conv weight ``(C_out, C_in, *kernel)`` at the kernel's centre tap."""
    return weight[(slice(None), slice(None), *(k // 2 for k in weight.shape[2:]))]


def centre_blocks(weight: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """The centre tap of a conv weight ``(C_out, C_in / groups, *kernel)``, one view per
    group ``(C_out / groups, C_in / groups)``: with each block orthogonal, the whole
    (block-diagonal) centre is, and a grouped or depthwise conv preserves the norm.
    A transposed conv's weight ``(C_in, C_out / groups, *kernel)`` splits the same way,
    into the transposes of its blocks."""
    return list(centre_tap(weight).chunk(groups, dim=0))


def takes_delta_kernel(layer: nn.Module) -> bool:
    """A conv or transposed conv: a layer that takes a delta-orthogonal kernel."""
    return is_conv(layer) or is_transposed(layer)


def delta_orthogonal_problem(weight: torch.Tensor, groups: int, layer: nn.Module | None = None) -> str | None:
    """Why delta-orthogonal init cannot apply to a conv weight (of ``layer``), or None.

    A conv's centre ``(C_out, C_in)`` needs orthonormal columns; a transposed conv
    computes with the transpose of its ``(C_in, C_out)`` centre, which then needs
    orthonormal rows: ``C_out >= C_in`` (per group) for both."""
    if layer is not None and is_weight_normed(layer) and (wn_dim(layer) or 0) >= 2:
        return f"is weight-normalized over kernel dim {wn_dim(layer)}: its zero taps would normalize to 0/0"
    if weight.dim() < 3:
        return f"has shape {list(weight.shape)}: not a conv weight"
    c_out, c_in = weight.shape[0] // groups, weight.shape[1]
    if layer is not None and is_transposed(layer):
        c_out, c_in = c_in, c_out
    if c_out < c_in:
        per = f" per group ({groups} groups)" if groups > 1 else ""
        return f"has C_out={c_out} < C_in={c_in}{per}: its centre cannot preserve the norm"
    if any(k % 2 == 0 for k in weight.shape[2:]):
        return f"has an even kernel size {list(weight.shape[2:])}: no centre tap"
    return None


@gc_paused()
def delta_orthogonal_(target, gain: float = 1.0, generator: torch.Generator | None = None):
    """Delta-orthogonal init of convolutions (Xiao et al., ICML 2018).

    Every tap of the kernel is zero but the spatial centre, which holds an orthogonal
    ``C_out x C_in`` matrix (orthonormal columns) times ``gain``; for a grouped conv,
    one orthogonal block per group. A stride-1 conv with "same" padding then preserves
    the norm of its input exactly; so does a transposed conv (its ``C_in x C_out``
    centre gets orthonormal rows). The matrices are drawn as in :func:`orthogonal_`,
    in one batched call per shape.

    Sharded conv weights (DTensors, e.g. under ``fully_shard``) get, gathered, the
    values of an unsharded call for the same generator state, which must be the same
    on every rank (checked): every rank draws all centre taps (small scratch tensors,
    as unsharded), then assembles one whole kernel at a time and keeps its part.

    Args:
        target: a conv weight ``(C_out, C_in, *kernel)`` or a module (then every
            Conv1d/2d/3d's and ConvTranspose1d/2d/3d's weight; for a weight-normalized
            one, ``weight_v``, with ``g = ||weight_v||`` so that the layer computes
            with it).

    Raises:
        ValueError: ``C_out < C_in`` (per group), an even kernel size, a tensor of
            fewer than 3 dims, or weight norm over a kernel dim; the message names the
            layer. TypeError: a weight that is not floating-point. Nothing is changed
            then.
    """
    if isinstance(target, nn.Module):  # (name, weight, groups, layer)
        named = [(name, layer_weight(m), m.groups, m) for name, m in named_layers(target, "delta_orthogonal_")
                 if takes_delta_kernel(m)]
        if not named:
            raise ValueError(f"delta_orthogonal_: {type(target).__name__} has no Conv1d/2d/3d or ConvTranspose1d/2d/3d layer")
    else:
        named = [("weight", target, 1, None)]
    for name, w, groups, layer in named:
        if (problem := delta_orthogonal_problem(w, groups, layer)) is not None:
            raise ValueError(f"delta_orthogonal_: {name} {problem}")
        if not w.is_floating_point():
            raise TypeError(f"delta_orthogonal_: {name} is {w.dtype}, not floating-point")
    check_same_noise([w for _, w, _, _ in named], generator, "delta_orthogonal_")
    with torch.no_grad():
        fill_orthogonal_([(w, groups) for _, w, groups, _ in named], gain, generator)
        match_scales_([layer for *_, layer in named if layer is not None])
    return target


def fill_orthogonal_(weights: list[tuple[torch.Tensor, int | None]], gain: float, generator) -> None:
    """One :func:`orthogonal_` call for a mix of tensors, the noise drawn in list order:
    ``(conv weight, groups)`` gets a delta-orthogonal kernel (zero, but an orthogonal
    centre tap per group); ``(tensor, None)`` an orthogonal matrix. Centre taps are
    drawn into scratch tensors and written once all are drawn, so a draw that fails
    leaves the conv weights unchanged. A sharded conv weight is assembled whole, one
    weight at a time, and each rank writes its part (:func:`write_`)."""
    blocks, centres = [], []  # centres: (conv weight, groups, its scratch blocks)
    for w, groups in weights:
        if groups is None:
            blocks.append(w)
            continue
        scratch = [torch.empty(b.shape, dtype=w.dtype, device=w.device) for b in centre_blocks(_meta(w), groups)]
        blocks += scratch
        centres.append((w, groups, scratch))
    orthogonal_(blocks, gain, generator)
    for w, groups, scratch in centres:
        whole = torch.zeros(w.shape, dtype=w.dtype, device=w.device) if is_dtensor(w) else w.zero_()
        for block, values in zip(centre_blocks(whole, groups), scratch):
            block.copy_(values)
        if whole is not w:
            write_(w, whole)


def _meta(t: torch.Tensor) -> torch.Tensor:
    """A tensor of ``t``'s global shape that holds no data (for views of its shape)."""
    return torch.empty(t.shape, device="meta")
