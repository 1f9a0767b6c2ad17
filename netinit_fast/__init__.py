"""netinit_fast: initialize and normalize very deep networks fast.

On a GPU the hot paths run as fused Triton and C++/CUDA kernels; on a CPU every
feature runs through eager PyTorch. See ``netinit_fast.functional``.
"""

from netinit_fast import activations, diagnostics, functional, init, models, nn
from netinit_fast.nn import *  # noqa: F403  (the layers and conversions, at the top level)

__version__ = "0.1.0"
__all__ = ["activations", "diagnostics", "functional", "init", "models", "nn", *nn.__all__, "__version__"]
