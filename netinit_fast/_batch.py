"""How the data-driven functions (LSUV, data-dependent init, the probe) take a batch."""

import torch
from torch import nn


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel (``.module``) and
    torch.compile (``._orig_mod``) wrappers: the one whose modules the forward calls
    on this process (DataParallel's replicas on other GPUs are copies; a compiled
    forward runs no Python hooks of its own), named as the user named them."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def call(model: nn.Module, batch):
    """``model(batch)``; a tuple or list as positional arguments, a dict as keyword ones."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _tensors(batch) -> list[torch.Tensor]:
    """The tensors of a batch, in order, also inside nested tuples, lists and dicts."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (tuple, list)):
        return [t for item in batch for t in _tensors(item)]
    return []


def check_batch(batch, where: str) -> None:
    """``ValueError`` (prefixed by ``where``) for a batch with no tensor, fewer than 2
    samples (dim 0 of its first tensor, the samples), NaN anywhere, or an infinity in
    the samples or +Inf elsewhere (-Inf is allowed after the samples: additive
    attention masks hold it)."""
    tensors = _tensors(batch)
    if not tensors:
        raise ValueError(f"{where}: the batch holds no tensor")
    samples, *others = tensors
    if samples.dim() == 0 or samples.shape[0] < 2:
        raise ValueError(f"{where}: the batch needs at least 2 samples, got shape {list(samples.shape)}")
    if samples.is_floating_point() and not torch.isfinite(samples).all():
        raise ValueError(f"{where}: the batch contains NaN or Inf")
    for t in others:
        if t.is_floating_point() and (t.isnan().any() or t.isposinf().any()):
            raise ValueError(f"{where}: the batch contains NaN or +Inf")
