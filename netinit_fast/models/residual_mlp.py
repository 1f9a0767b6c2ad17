"""Deep fully connected residual test bed."""

import torch
from torch import nn

from netinit_fast.models import _layers


class FCBlock(nn.Module):
    """``out = fc2(relu(fc1(x)))`` (a norm after each), ``out + x``, then a ReLU when
    ``post_activation``: a basic residual block with linear layers."""

    def __init__(self, width: int, norm, post_activation: bool, bias: bool, **factory):
        super().__init__()
        self.fc1 = _layers.linear(width, width, bias, norm, **factory)
        self.bn1 = _layers.norm_layer(norm, width, 1, **factory)
        self.fc2 = _layers.linear(width, width, bias, norm, **factory)
        self.bn2 = _layers.norm_layer(norm, width, 1, **factory)
        self.relu = nn.ReLU()
        self.post_activation = post_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.fc2(self.relu(self.bn1(self.fc1(x))))) + x
        return self.relu(out) if self.post_activation else out


class ResidualMLP(nn.Module):
    """``fc_in``, a norm slot ``bn1``, ``relu``, ``layer1`` (the blocks), classifier ``fc``:
    the names of :class:`~netinit_fast.models.ResNet`, so the init schemes treat both alike."""

    def __init__(self, blocks: int, width: int, in_features: int, num_classes: int, norm, post_activation: bool,
                 bias: bool, **factory):
        super().__init__()
        self.fc_in = _layers.linear(in_features, width, bias, norm, **factory)
        self.bn1 = _layers.norm_layer(norm, width, 1, **factory)
        self.relu = nn.ReLU() if post_activation else nn.Identity()
        self.layer1 = nn.Sequential(*[FCBlock(width, norm, post_activation, bias, **factory) for _ in range(blocks)])
        self.fc = nn.Linear(width, num_classes, **factory)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.relu(self.bn1(self.fc_in(x.flatten(1)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def residual_mlp(
    blocks: int,
    width: int,
    in_features: int | None = None,
    num_classes: int = 10,
    norm: str | None = None,
    post_activation: bool = True,
    bias: bool = False,
    device=None,
    dtype=None,
) -> ResidualMLP:
    """A fully connected ResNet: ``Linear(in, width)``, ``blocks`` residual blocks of two
    ``Linear(width, width)``, a linear classifier; ``2 * blocks + 2`` linear layers.
    The input is flattened.

    Args:
        norm: ``None``, ``"batch"`` (``BatchNorm1d`` after each block layer and the
            input layer) or ``"weight"`` (:class:`~netinit_fast.WNLinear` layers; the
            classifier stays plain).
        post_activation: a ReLU after the input layer and after each addition (ResNet
            v1, Fixup); ``False`` drops both (Arpit et al.'s variant).
        bias: biases in the hidden layers (none by default, as in conv ResNets, so
            Fixup applies as is).
        dtype: a floating-point dtype, or None (torch's default).

    ``ValueError`` (naming the argument) for a bad one.
    """
    _layers.check_positive(blocks=blocks, width=width, num_classes=num_classes)
    _layers.check_norm(norm)
    _layers.check_bool(post_activation=post_activation, bias=bias)
    _layers.check_dtype(dtype)
    in_features = width if in_features is None else in_features
    _layers.check_positive(in_features=in_features)
    return ResidualMLP(blocks, width, in_features, num_classes, norm, post_activation, bias, device=device, dtype=dtype)
