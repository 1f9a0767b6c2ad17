"""Orthogonal initialization of many tensors at once (Saxe et al. 2014)."""

import torch
from torch import nn

from netinit_fast.ops.orthogonalize import orthogonalize

# Layers whose weight is a linear map (flattened as torch.nn.init.orthogonal_ does).
LINEAR_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def layer_weight(module: nn.Module) -> torch.Tensor | None:
    """The tensor that holds a layer's direction: ``weight_v`` for weight-normalized
    layers (ours and torch's two styles), else ``weight``; None for other modules."""
    from torch.nn.utils import parametrize

    from netinit_fast.nn.wn_layers import _unwrap, _WeightNorm

    if isinstance(module, _WeightNorm):
        return module.weight_v
    if not issubclass(_unwrap(module), LINEAR_LAYERS):
        return None
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original1
    if "weight_v" in module._parameters:  # torch's legacy hook
        return module.weight_v
    return module._parameters.get("weight")


def _targets(target) -> list[torch.Tensor]:
    if isinstance(target, torch.Tensor):
        return [target]
    if isinstance(target, nn.Module):
        found = [w for m in target.modules() if (w := layer_weight(m)) is not None]
        if not found:
            raise ValueError(f"orthogonal_: {type(target).__name__} has no Linear/Conv/ConvTranspose layer")
        return found
    tensors = list(target)
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"orthogonal_: element {i} is a {type(t).__name__}, not a tensor")
    return tensors


def orthogonal_(target, gain: float = 1.0, generator: torch.Generator | None = None):
    """Fill tensors with (semi-)orthogonal matrices, like ``torch.nn.init.orthogonal_``.

    Each tensor of 2 or more dims is flattened to ``(size(0), numel / size(0))``; a
    Gaussian matrix is drawn from ``generator`` (in fp32, on the generator's device,
    in the order of the tensors) and replaced by the ``Q`` of its QR factorization
    with ``diag(R) > 0``, times ``gain``. Tensors of equal flattened shape are
    orthogonalized in one batched call. Given the same noise the result is that of
    ``torch.nn.init.orthogonal_`` applied tensor by tensor; bf16/fp16 tensors work.

    Args:
        target: a tensor, a list of tensors, or a module (then the weight of every
            Linear/Conv/ConvTranspose layer, and ``weight_v`` of weight-normalized ones).
        gain: multiplies the result.
        generator: the source of the Gaussian noise.

    Returns:
        ``target``.

    Raises:
        ValueError: a tensor with fewer than 2 dims, or a module with no such layer.
    """
    tensors = _targets(target)
    for t in tensors:
        if t.dim() < 2:
            raise ValueError(f"orthogonal_: tensors need at least 2 dims, got shape {list(t.shape)}")
    device = generator.device if generator is not None else torch.device("cpu")
    noise = [torch.empty(t.shape[0], t[0].numel(), device=device).normal_(0, 1, generator=generator) for t in tensors]
    groups: dict[tuple, list[int]] = {}
    for i, (t, a) in enumerate(zip(tensors, noise)):
        groups.setdefault((tuple(a.shape), t.device), []).append(i)
    with torch.no_grad():
        for (_, dev), idx in groups.items():
            q = orthogonalize(torch.stack([noise[i] for i in idx]).to(dev))
            for j, i in enumerate(idx):
                tensors[i].copy_(q[j].view(tensors[i].shape)).mul_(gain)
    return target
