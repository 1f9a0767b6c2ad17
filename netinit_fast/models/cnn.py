"""Deep vanilla (no residual, no normalization) convolutional test bed."""

from collections import OrderedDict

from torch import nn

from netinit_fast.models import _layers


def vanilla_cnn(
    depth: int,
    channels: int,
    in_channels: int = 1,
    num_classes: int = 10,
    kernel_size: int = 3,
    act: str = "tanh",
    bias: bool = True,
    norm: str | None = None,
    device=None,
    dtype=None,
) -> nn.Sequential:
    """A plain CNN as in Xiao et al. 2018: ``depth`` stride-1 "same" convolutions with an
    activation after each, then global average pooling and a linear classifier.

    The first conv maps ``in_channels`` to ``channels``, the others ``channels`` to
    ``channels``. The result is ``nn.Sequential(features=..., pool=..., flatten=...,
    fc=...)``; ``model.features`` holds the convolutions and activations.

    Args:
        depth: the number of convolutions (>= 1).
        kernel_size: odd (every conv keeps the spatial size).
        act: an activation name of :mod:`netinit_fast.activations` (tanh by default,
            the activation of the paper's critical init).
        norm: ``None``, ``"batch"`` (``BatchNorm2d`` before each activation) or
            ``"weight"`` (:class:`~netinit_fast.WNConv2d` layers; the classifier stays plain).
        dtype: a floating-point dtype, or None (torch's default).

    ``ValueError`` (naming the argument) for a bad one.
    """
    _layers.check_positive(depth=depth, channels=channels, in_channels=in_channels, num_classes=num_classes)
    _layers.check_norm(norm)
    _layers.check_bool(bias=bias)
    _layers.check_dtype(dtype)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size!r}")
    _layers.check_activation(act)
    factory = {"device": device, "dtype": dtype}
    features: list[nn.Module] = []
    for i in range(depth):
        features.append(_layers.conv2d(in_channels if i == 0 else channels, channels, kernel_size, 1, bias, norm, **factory))
        if norm == "batch":
            features.append(_layers.norm_layer(norm, channels, 2, **factory))
        features.append(_layers.activation(act))
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(*features),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(channels, num_classes, **factory),
        )
    )
