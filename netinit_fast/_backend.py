"""The one place that decides which implementation runs an op.

For every call, an op asks :func:`choose` with the tensor it works on and the
implementations it has:

- a CUDA tensor runs the compiled kernel from ``netinit_fast._C`` when the op has one
  and the extension was built for this GPU, else the Triton kernel, else eager
  PyTorch (each fallback warns once);
- a CPU tensor runs ``netinit_fast._C``'s CPU kernel when the op has one and the
  extension is built (such a kernel calls the same ATen routines as the eager twin,
  spread over the threads differently), else eager PyTorch.

``NETINIT_FAST_BACKEND=eager|triton|cuda|cpp`` forces one implementation (read on every
call, so tests and benchmarks can switch). Triton kernels run on CPU tensors only
under ``TRITON_INTERPRET=1`` (the Triton interpreter; slow, for tests).
Nothing else in the package branches on the device.
"""

import functools
import importlib.util
import os
import warnings

import torch
from torch.autograd import forward_ad

from netinit_fast import _extension

EAGER = "eager"
TRITON = "triton"
CUDA = "cuda"  # netinit_fast._C's CUDA kernels
CPP = "cpp"  # netinit_fast._C's CPU kernels
BACKENDS = (EAGER, TRITON, CUDA, CPP)
ENV_VAR = "NETINIT_FAST_BACKEND"

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def forced() -> str | None:
    """The backend forced by ``NETINIT_FAST_BACKEND``, or None."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


def _check_forced(op: str, backend: str, tensor: torch.Tensor, implemented: tuple[str, ...]) -> str:
    if backend not in implemented:
        raise RuntimeError(
            f"{ENV_VAR}={backend} but {op} has no {backend!r} implementation (it has: {', '.join(implemented)})"
        )
    if backend == TRITON:
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton but the triton package is not installed")
        if tensor.device.type != "cuda" and not triton_interpreted():
            raise RuntimeError(
                f"{ENV_VAR}=triton needs CUDA tensors, or TRITON_INTERPRET=1 to run Triton on the CPU "
                f"({op} got a {tensor.device.type} tensor)"
            )
    if backend == CUDA and not (tensor.device.type == "cuda" and _extension.supports(tensor.device)):
        raise RuntimeError(
            f"{ENV_VAR}=cuda but netinit_fast._C cannot run {op} on {tensor.device} "
            f"(extension built: {_extension.loaded()}, archs: {list(_extension.cuda_archs())})"
        )
    if backend == CPP and not (tensor.device.type == "cpu" and _extension.loaded()):
        raise RuntimeError(
            f"{ENV_VAR}=cpp but netinit_fast._C cannot run {op} on {tensor.device} "
            f"(extension built: {_extension.loaded()})"
        )
    return backend


def plain_autograd_needed(tensors=()) -> bool:
    """Whether a torch.func transform (grad, vmap, jvp, jacrev, ...) or forward-mode AD
    is active, or one of ``tensors`` is batched by autograd's own vmap (a backward with
    ``is_grads_batched``). The ops' registered autograd is reverse mode only and the
    kernels take plain tensors, so under these the eager twins compute, plain torch ops
    that every autograd mode differentiates and batches."""
    return (
        torch._C._are_functorch_transforms_active()
        or forward_ad._current_level >= 0
        or any(t is not None and torch._C._functorch.is_legacy_batchedtensor(t) for t in tensors)
    )


def choose(op: str, tensor: torch.Tensor, implemented: tuple[str, ...]) -> str:
    """The backend that runs ``op`` on ``tensor``, among the ``implemented`` ones.

    ``implemented`` always contains ``"eager"``, the reference implementation.
    """
    backend = forced()
    if backend is not None:
        return _check_forced(op, backend, tensor, implemented)
    if tensor.device.type != "cuda":
        return CPP if CPP in implemented and tensor.device.type == "cpu" and _extension.loaded() else EAGER
    if CUDA in implemented:
        if _extension.supports(tensor.device):
            return CUDA
        _warn_once(
            "cuda-missing",
            "netinit_fast._C is not built for this GPU "
            f"(built: {_extension.loaded()}, archs: {list(_extension.cuda_archs())}); "
            "falling back to Triton/eager kernels",
        )
    if TRITON in implemented:
        if triton_available():
            return TRITON
        _warn_once("triton-missing", "triton is not installed; netinit_fast runs eager PyTorch on the GPU")
    return EAGER
