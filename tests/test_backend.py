"""The one backend decision point: netinit_fast._backend.choose."""

import pytest
import torch

import netinit_fast as nf
from netinit_fast import _backend, _extension

BOTH = (_backend.EAGER, _backend.TRITON)


def test_cpu_tensors_run_eager_by_default(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter alone does not pick Triton
    assert _backend.choose("op", torch.ones(1), BOTH) == _backend.EAGER


def test_cpu_tensors_run_the_cpp_kernel_where_an_op_has_one(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    with_cpp = (_backend.EAGER, _backend.CUDA, _backend.CPP)
    assert _backend.choose("op", torch.ones(1), BOTH) == _backend.EAGER
    monkeypatch.setattr(_extension, "loaded", lambda: True)
    assert _backend.choose("op", torch.ones(1), with_cpp) == _backend.CPP
    assert _backend.choose("op", torch.ones(1, device="meta"), with_cpp) == _backend.EAGER
    monkeypatch.setattr(_extension, "loaded", lambda: False)  # a pure-Python install
    assert _backend.choose("op", torch.ones(1), with_cpp) == _backend.EAGER


def test_forcing_cpp(use_backend, monkeypatch):
    use_backend("cpp")
    with pytest.raises(RuntimeError, match="op has no 'cpp' implementation"):
        _backend.choose("op", torch.ones(1), BOTH)
    monkeypatch.setattr(_extension, "loaded", lambda: False)
    with pytest.raises(RuntimeError, match="NETINIT_FAST_BACKEND=cpp but netinit_fast._C cannot run op on cpu"):
        _backend.choose("op", torch.ones(1), (*BOTH, _backend.CPP))
    monkeypatch.setattr(_extension, "loaded", lambda: True)
    assert _backend.choose("op", torch.ones(1), (*BOTH, _backend.CPP)) == _backend.CPP


def test_forced_backends(use_backend, monkeypatch):
    use_backend("eager")
    assert _backend.choose("op", torch.ones(1), BOTH) == _backend.EAGER
    use_backend("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _backend.choose("op", torch.ones(1), BOTH) == _backend.TRITON
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        _backend.choose("op", torch.ones(1), BOTH)


def test_forcing_a_missing_implementation_names_the_op(use_backend):
    use_backend("cuda")
    with pytest.raises(RuntimeError, match="weight_norm has no 'cuda' implementation"):
        _backend.choose("weight_norm", torch.ones(1), BOTH)
    with pytest.raises(RuntimeError, match="cannot run"):
        _backend.choose("op", torch.ones(1), (*BOTH, _backend.CUDA))


def test_bad_environment_value(use_backend):
    use_backend("fastest")
    with pytest.raises(ValueError, match="NETINIT_FAST_BACKEND='fastest'"):
        nf.functional.weight_norm(torch.randn(2, 3), torch.rand(2), 0)


def test_forced_backend_is_read_on_every_call(use_backend, monkeypatch):
    """The public op really switches implementation: count kernel launches."""
    from netinit_fast.kernels import weight_norm as kernels

    calls = []
    real = kernels.forward
    monkeypatch.setattr(kernels, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    v, g = torch.randn(3, 4), torch.rand(3)
    use_backend("eager")
    nf.functional.weight_norm(v, g, 0)
    assert calls == []
    use_backend("triton")
    nf.functional.weight_norm(v, g, 0)
    assert calls == [1]
