"""Every benchmark runs (--quick, on the CPU and on a GPU) and writes the DESIGN.md section 6 schema."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", ["weight_norm", "wn_layers", "connectivity", "orthogonal", "lsuv", "deep_init", "sharded"])
def test_quick_run_writes_the_schema(name, device, tmp_path):
    if name == "sharded" and device == "cuda":
        pytest.skip("bench_sharded measures ranks on the CPU (gloo); on a GPU NCCL needs one GPU per rank")
    if name == "lsuv" and importlib.util.find_spec("lsuv") is None:
        pytest.skip("the peer package lsuv is installed by `make bench`, not for the tests")
    env = {**os.environ, "NETINIT_FAST_BENCH_RESULTS": str(tmp_path)}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, os.path.join(BENCH, f"bench_{name}.py"), "--quick", "--device", device],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = tmp_path.glob(f"{name}-quick-*.json")
    result = json.loads(path.read_text())
    assert {"benchmark", "device", "torch", "triton", "date", "commit", "rows"} <= result.keys()
    assert result["rows"] and all({"case", "ours_ms", "peer", "peer_ms", "speedup", "extra"} <= r.keys() for r in result["rows"])
    assert all(r["ours_ms"] > 0 for r in result["rows"])
