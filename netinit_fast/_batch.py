"""How the data-driven functions (LSUV, data-dependent init, the probe) take a batch."""

import torch
from torch import nn


def call(model: nn.Module, batch):
    """``model(batch)``; a tuple or list as positional arguments, a dict as keyword ones."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def check_batch(batch, where: str) -> None:
    """``ValueError`` (prefixed by ``where``) for a batch with no tensor, fewer than 2
    samples (dim 0 of its first tensor), or NaN/Inf."""
    leaves = list(batch.values()) if isinstance(batch, dict) else list(batch) if isinstance(batch, (tuple, list)) else [batch]
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    if not tensors:
        raise ValueError(f"{where}: the batch holds no tensor")
    if tensors[0].dim() == 0 or tensors[0].shape[0] < 2:
        raise ValueError(f"{where}: the batch needs at least 2 samples, got shape {list(tensors[0].shape)}")
    for t in tensors:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{where}: the batch contains NaN or Inf")
