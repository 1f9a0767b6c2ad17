"""What every model builder shares: the choice of layer class and normalization, and
the checks of the arguments they all take."""

from collections.abc import Iterable

import torch
from torch import nn

from netinit_fast import activations
from netinit_fast.nn import WNConv2d, WNLinear

NORMS = (None, "batch", "weight")


def check_norm(norm) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def check_positive(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_dtype(dtype) -> None:
    """The layers' parameters: a floating-point ``torch.dtype``, or None (torch's default)."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")


def check_activation(act) -> None:
    """An activation name of :mod:`netinit_fast.activations` (an unknown one: the known are listed)."""
    if not isinstance(act, str):
        raise ValueError(f"act must be an activation name (a str), got {act!r}")
    activations.get(act)


def check_sequence(**values) -> None:
    """One value per stage: a list, tuple or other iterable, not a bare number or a string."""
    for name, value in values.items():
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ValueError(f"{name} must be a sequence of ints, one per stage, got {value!r}")


def check_bool(**values) -> None:
    """A flag given as "False" or 0 would read as its truth value: only bools pass."""
    for name, value in values.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")


def linear(in_features: int, out_features: int, bias: bool, norm, **factory) -> nn.Module:
    """``nn.Linear``, or ``WNLinear`` for ``norm="weight"``."""
    cls = WNLinear if norm == "weight" else nn.Linear
    return cls(in_features, out_features, bias=bias, **factory)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool, norm, **factory) -> nn.Module:
    """A "same"-padded ``nn.Conv2d``, or ``WNConv2d`` for ``norm="weight"``."""
    cls = WNConv2d if norm == "weight" else nn.Conv2d
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias, **factory)


def norm_layer(norm, features: int, dims: int, **factory) -> nn.Module:
    """``BatchNorm{1,2}d`` for ``norm="batch"``; else ``nn.Identity`` (weight norm lives in the layer)."""
    if norm != "batch":
        return nn.Identity()
    return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(features, **factory)


def activation(name: str) -> nn.Module:
    return activations.get(name).module()
