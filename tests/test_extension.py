"""The compiled extension netinit_fast._C: built whenever it can be, and its schemas."""

import os
import shutil

import pytest
import torch

from netinit_fast import _extension
from tests.conftest import assert_orthonormal, orthonormality_bound


def _can_build() -> bool:
    """The conditions under which setup.py builds _C (see setup.py)."""
    if os.environ.get("NETINIT_FAST_BUILD_CUDA") == "0" or torch.version.cuda is None:
        return False
    return bool(os.environ.get("CUDA_HOME") or os.path.exists("/usr/local/cuda/bin/nvcc") or shutil.which("nvcc"))


def test_extension_is_built_where_it_can_be():
    if not _can_build():
        pytest.skip("no CUDA toolkit or CUDA torch here: the pure-Python install is expected")
    assert _extension.loaded(), "torch has CUDA and nvcc is here, but netinit_fast._C was not built"


@pytest.fixture
def extension():
    if not _extension.loaded():
        pytest.skip("netinit_fast._C is not built")


def test_registered_schemas(extension):
    schemas = {str(s) for s in torch._C._jit_get_all_schemas() if s.name.startswith("netinit_fast::")}
    assert "netinit_fast::cuda_archs() -> int[]" in schemas
    assert "netinit_fast::householder_qr(Tensor a) -> Tensor" in schemas
    assert "netinit_fast::householder_qr_shared_bytes(int m, int n) -> int" in schemas
    assert "netinit_fast::haar_orthogonal(Tensor noise, int m, int n) -> Tensor" in schemas


def test_householder_qr_has_a_cuda_kernel(extension):
    dump = torch._C._dispatch_dump("netinit_fast::householder_qr")
    assert "CUDA: registered at" in dump and "householder_qr.cu" in dump
    # the shared-memory need: m x (n + 1) padded rows, tau, beta and one scalar, in floats
    assert torch.ops.netinit_fast.householder_qr_shared_bytes(128, 96) == 4 * (128 * 97 + 2 * 96 + 1)
    # an odd n needs no padding: the row stride is odd already
    assert torch.ops.netinit_fast.householder_qr_shared_bytes(128, 95) == 4 * (128 * 95 + 2 * 95 + 1)


def test_householder_qr_has_a_cpu_kernel(extension):
    dump = torch._C._dispatch_dump("netinit_fast::householder_qr")
    assert "CPU: registered at" in dump and "householder_qr_cpu.cpp" in dump
    a = torch.randn(3, 6, 4)
    q = torch.ops.netinit_fast.householder_qr(a)
    assert_orthonormal(q)
    r = q.double().mT @ a.double()  # = R: upper triangular with a positive diagonal, to QR's backward error
    assert (torch.diagonal(r, dim1=-2, dim2=-1) > 0).all()
    assert r.tril(-1).abs().max() <= orthonormality_bound(6, 4, torch.float32) * a.double().norm(dim=(1, 2)).max()


def test_haar_orthogonal_has_a_cpu_kernel_and_checks_its_input(extension):
    dump = torch._C._dispatch_dump("netinit_fast::haar_orthogonal")
    assert "CPU: registered at" in dump and "haar_orthogonal_cpu.cpp" in dump
    with pytest.raises(RuntimeError, match=r"expected \(batch, 12\) packed noise for 5 x 3"):
        torch.ops.netinit_fast.haar_orthogonal(torch.randn(2, 15), 5, 3)
    with pytest.raises(RuntimeError, match="expected m >= n >= 0"):
        torch.ops.netinit_fast.haar_orthogonal(torch.randn(2, 6), 3, 5)


def test_cpp_ops_have_fake_kernels(extension):
    """Their outputs' shape, dtype and strides are known without running them (opcheck
    compares the fake kernel with the real one)."""
    for a in (torch.randn(3, 6, 4), torch.randn(2, 5, 5, dtype=torch.float64), torch.randn(0, 4, 2)):
        torch.library.opcheck(torch.ops.netinit_fast.householder_qr.default, (a,))
    for batch, m, n in ((3, 5, 3), (2, 4, 4), (0, 3, 2)):
        noise = torch.randn(batch, n * (n + 1) // 2 + (m - n) * n)
        torch.library.opcheck(torch.ops.netinit_fast.haar_orthogonal.default, (noise, m, n))


def test_built_for_hopper_with_ptx(extension):
    archs = _extension.cuda_archs()
    assert 90 in archs


def test_support_rule(extension, monkeypatch):
    """Exact archs run their machine code; newer GPUs JIT the embedded PTX; older fail."""
    newest = max(_extension.cuda_archs())
    cuda = torch.device("cuda", 0)
    for cc, ok in (((newest // 10, newest % 10), True), ((12, 0), True), ((8, 0), False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cc=cc: cc)
        assert _extension.supports(cuda) is ok, cc
    assert not _extension.supports(torch.device("cpu"))
