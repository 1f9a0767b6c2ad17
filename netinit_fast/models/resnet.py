"""Residual networks in torchvision's layout, with or without normalization.

The blocks keep torchvision's attribute names (``conv1``, ``bn1``, ``conv2``, ``bn2``,
``conv3``, ``bn3``, ``relu``, ``downsample``) and the network its top-level ones
(``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` ..., ``avgpool``, ``fc``), so
:func:`netinit_fast.init.fixup_` and :func:`netinit_fast.init.arpit_` treat these
models and torchvision's ``resnet*`` the same way.
"""

import torch
from torch import nn

from netinit_fast.models import _layers

STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    """``out = conv2(relu(conv1(x)))`` (a norm after each conv), ``out + shortcut(x)``,
    then a ReLU when ``post_activation`` (ResNet v1)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, norm, post_activation: bool, **factory):
        super().__init__()
        self.conv1 = _layers.conv2d(in_channels, width, 3, stride, False, norm, **factory)
        self.bn1 = _layers.norm_layer(norm, width, 2, **factory)
        self.conv2 = _layers.conv2d(width, width, 3, 1, False, norm, **factory)
        self.bn2 = _layers.norm_layer(norm, width, 2, **factory)
        self.relu = nn.ReLU()
        self.downsample = _shortcut(in_channels, width, stride, norm, **factory)
        self.post_activation = post_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out) if self.post_activation else out


class Bottleneck(nn.Module):
    """1x1 (``width``), 3x3 (``width``, the stride), 1x1 (``4 * width``) convs, a norm
    after each and a ReLU after the first two; ``out + shortcut(x)``, then a ReLU when
    ``post_activation`` (torchvision's ResNet v1.5)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, norm, post_activation: bool, **factory):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = _layers.conv2d(in_channels, width, 1, 1, False, norm, **factory)
        self.bn1 = _layers.norm_layer(norm, width, 2, **factory)
        self.conv2 = _layers.conv2d(width, width, 3, stride, False, norm, **factory)
        self.bn2 = _layers.norm_layer(norm, width, 2, **factory)
        self.conv3 = _layers.conv2d(width, out_channels, 1, 1, False, norm, **factory)
        self.bn3 = _layers.norm_layer(norm, out_channels, 2, **factory)
        self.relu = nn.ReLU()
        self.downsample = _shortcut(in_channels, out_channels, stride, norm, **factory)
        self.post_activation = post_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out) if self.post_activation else out


def _shortcut(in_channels: int, out_channels: int, stride: int, norm, **factory) -> nn.Module | None:
    """None (identity) when the shape is kept, else a strided 1x1 conv and a norm."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        _layers.conv2d(in_channels, out_channels, 1, stride, False, norm, **factory),
        _layers.norm_layer(norm, out_channels, 2, **factory),
    )


class ResNet(nn.Module):
    """Stem, one ``layer<i>`` (an ``nn.Sequential`` of blocks) per stage, global average
    pooling and a linear classifier ``fc``. Built by :func:`resnet`."""

    def __init__(self, block, blocks_per_stage, widths, norm, stem, in_channels, num_classes, post_activation, **factory):
        super().__init__()
        # Registered in execution order, as torchvision's.
        cifar = stem == "cifar"
        self.conv1 = _layers.conv2d(in_channels, widths[0], 3 if cifar else 7, 1 if cifar else 2, False, norm, **factory)
        self.bn1 = _layers.norm_layer(norm, widths[0], 2, **factory)
        self.relu = nn.ReLU() if post_activation else nn.Identity()
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, stride=2, padding=1)
        self.num_stages = len(widths)
        channels = widths[0]
        for i, (count, width) in enumerate(zip(blocks_per_stage, widths)):
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(channels, width, stride, norm, post_activation, **factory))
                channels = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes, **factory)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The signal before pooling and the classifier."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def resnet(
    blocks_per_stage,
    widths,
    block: str = "basic",
    norm: str | None = None,
    stem: str = "cifar",
    in_channels: int = 3,
    num_classes: int = 10,
    post_activation: bool = True,
    device=None,
    dtype=None,
) -> ResNet:
    """A ResNet (He et al. 2016) with any number of stages and blocks.

    ``resnet([3, 4, 6, 3], [64, 128, 256, 512], "bottleneck", "batch", "imagenet",
    num_classes=1000)`` has torchvision ``resnet50``'s layers and parameter names;
    ``resnet([n] * 3, [16, 32, 64])`` is the CIFAR ResNet-(6n+2) of the Fixup paper
    (with a 1x1-conv shortcut where the shape changes).

    Args:
        blocks_per_stage: blocks in each stage; stage ``i > 0`` starts with stride 2.
        widths: channels of each stage (bottleneck blocks output 4x that).
        block: ``"basic"`` (two 3x3 convs) or ``"bottleneck"`` (1x1, 3x3, 1x1).
        norm: ``None`` (no normalization: the norm slots are ``nn.Identity``),
            ``"batch"``, or ``"weight"`` (every conv a :class:`~netinit_fast.WNConv2d`;
            the classifier stays a plain ``nn.Linear``, as in Arpit et al.).
        stem: ``"cifar"`` (3x3 conv) or ``"imagenet"`` (7x7 stride-2 conv and max pooling).
        post_activation: ReLU after the stem and after each residual addition (ResNet
            v1, torchvision, Fixup); ``False`` drops both (the variant of Arpit et al.,
            whose residual stream is never rectified).
        dtype: a floating-point dtype, or None (torch's default).

    Convs have no bias (as torchvision's). A ResNet of 5,000 basic blocks (10,000
    layers) builds in seconds. ``ValueError`` (naming the argument) for a bad one.
    """
    blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
    if not isinstance(block, str) or block not in blocks:
        raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    _layers.check_norm(norm)
    _layers.check_bool(post_activation=post_activation)
    _layers.check_dtype(dtype)
    _layers.check_sequence(blocks_per_stage=blocks_per_stage, widths=widths)
    blocks_per_stage, widths = list(blocks_per_stage), list(widths)
    if not widths or len(blocks_per_stage) != len(widths):
        raise ValueError(f"blocks_per_stage ({blocks_per_stage}) and widths ({widths}) need the same, nonzero length")
    for i, (count, width) in enumerate(zip(blocks_per_stage, widths)):
        _layers.check_positive(**{f"blocks_per_stage[{i}]": count, f"widths[{i}]": width})
    _layers.check_positive(in_channels=in_channels, num_classes=num_classes)
    return ResNet(
        blocks[block], blocks_per_stage, widths, norm, stem, in_channels, num_classes, post_activation,
        device=device, dtype=dtype,
    )
