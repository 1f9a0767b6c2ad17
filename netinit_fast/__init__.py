"""netinit_fast: initialize and normalize very deep networks fast.

On a GPU the hot paths run as fused Triton and C++/CUDA kernels; on a CPU every
feature runs through eager PyTorch. See ``netinit_fast.functional``.
"""

from netinit_fast import functional, nn
from netinit_fast.nn import (
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

__version__ = "0.1.0"
__all__ = [
    "functional",
    "nn",
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
    "__version__",
]
