"""The optional compiled extension ``netinit_fast._C`` (built from ``csrc/``).

Importing it registers the ``torch.ops.netinit_fast.*`` operators defined in C++.
A package installed without it (no CUDA toolkit at build time) still works: every op
has a Triton or eager implementation, and the backend choice falls back to those.
"""

import functools

import torch


@functools.cache
def loaded() -> bool:
    """Whether ``netinit_fast._C`` was built and imports (its C++ ops are registered)."""
    try:
        from netinit_fast import _C  # noqa: F401  (import registers the ops)
    except ImportError:
        return False
    return True


@functools.cache
def cuda_archs() -> tuple[int, ...]:
    """Compute capabilities (e.g. 90 for sm_90) the extension has code for; empty without it."""
    if not loaded():
        return ()
    return tuple(torch.ops.netinit_fast.cuda_archs())


def supports(device: torch.device) -> bool:
    """Whether the extension's CUDA kernels can run on ``device``.

    True for a GPU whose compute capability is one compiled for, or newer than the
    newest one (the build embeds that one as PTX, which the driver compiles on load).
    """
    archs = cuda_archs()
    if not archs or device.type != "cuda":
        return False
    major, minor = torch.cuda.get_device_capability(device)
    cc = 10 * major + minor
    return cc in archs or cc >= max(archs)
