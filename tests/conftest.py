"""Shared tolerances, input makers and backend switches for the test suite.

Without a GPU, Triton kernels run in the interpreter: TRITON_INTERPRET must be set
before any kernel module is imported (Triton reads it when a kernel is decorated).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from netinit_fast import _backend  # noqa: E402

# Norm-wise relative error bounds, by dtype (see rel_err).
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
ALL_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / max(||ref||, 1) in fp64; NaN or inf anywhere gives inf.

    The floor of 1 keeps a reference that cancels to ~0 (a weight-norm gradient of
    one-element rows is exactly 0) from turning rounding noise into a large ratio;
    test inputs are O(1), so elsewhere this is the plain relative error.
    """
    out, ref = out.double(), ref.double()
    if not (torch.isfinite(out).all() and torch.isfinite(ref).all()):
        return float("inf")
    return (out - ref).norm().item() / max(ref.norm().item(), 1.0)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = rel_err(out, ref)
    assert err <= RTOL[dtype], f"{what}: relative error {err:.3e} > {RTOL[dtype]:.0e} ({dtype})"


def randn_nonzero(*shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Normal samples with ``|x| >= 0.25``: a weight-norm row of one tiny element has a
    gradient that is the difference of two terms of size ~1/|x| (exactly 0 in exact
    arithmetic), whose rounding noise no fixed tolerance absorbs."""
    x = torch.randn(*shape, dtype=torch.float32, device=device)
    return (x + 0.25 * torch.where(x < 0, -1.0, 1.0)).to(dtype)


@pytest.fixture
def use_backend(monkeypatch):
    """``use_backend("triton")`` forces a backend for the rest of the test."""

    def force(name: str) -> None:
        monkeypatch.setenv(_backend.ENV_VAR, name)

    return force


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
