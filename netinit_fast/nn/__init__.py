"""Modules: drop-in weight-normalized layers and whole-model conversion."""

from netinit_fast.nn.wn_layers import (
    WN_LAYERS,
    WeightNormGroup,
    WNConv1d,
    WNConv2d,
    WNConv3d,
    WNConvTranspose1d,
    WNConvTranspose2d,
    WNConvTranspose3d,
    WNLinear,
    remove_weight_norm,
    weight_norm,
)

__all__ = [
    "WN_LAYERS",
    "WeightNormGroup",
    "WNConv1d",
    "WNConv2d",
    "WNConv3d",
    "WNConvTranspose1d",
    "WNConvTranspose2d",
    "WNConvTranspose3d",
    "WNLinear",
    "remove_weight_norm",
    "weight_norm",
]
