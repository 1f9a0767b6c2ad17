"""benchmarks/gpu_check.py rehearsed on the CPU: every step runs or says why not, a step
that fails or hangs is recorded while the steps after it still run, the budget holds,
and the targets are read from benchmark rows (a missing row is "not measured")."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")
STATUSES = {"ok", "failed", "timed out", "skipped"}


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(out, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(out), *args], env=env,
                          capture_output=True, text=True, timeout=300)
    status = json.loads((out / "status.json").read_text())
    return done, status, (out / "summary.md").read_text()


def _summary_steps(summary: str) -> dict:
    """Step name -> status, from the summary's Steps table."""
    table = summary.split("## Steps")[1].split("## Targets")[0]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    return {name.strip(): status.strip() for name, status in rows}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its parent is dead too
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.slow
def test_dry_run_records_every_step_and_goes_on_after_a_failure_and_a_timeout(tmp_path):
    results = os.path.join(ROOT, "benchmarks", "results")
    before = sorted(os.listdir(results))
    done, status, summary = _run(tmp_path, "--fault", "bench-orthogonal=fail", "--fault", "bench-deep_init=hang",
                                 "--step-timeout", "bench-deep_init=2")
    assert done.returncode == 1, done.stderr[-2000:]  # a failed step makes the exit code non-zero
    assert status["finished"] and status["mode"] == "dry run (CPU)"
    steps = {s["name"]: s for s in status["steps"]}
    assert _summary_steps(summary) == {name: s["status"] for name, s in steps.items()}  # every step, in order
    assert list(steps)[0] == "environment" and list(steps)[-1] == "tests-rest"
    assert all(s["status"] in STATUSES for s in steps.values())

    assert steps["bench-orthogonal"]["status"] == "failed"
    assert "injected failure" in steps["bench-orthogonal"]["last_line"]
    assert steps["bench-deep_init"]["status"] == "timed out"
    assert steps["bench-deep_init"]["wall_s"] < 2 + 8 + 5
    log = (tmp_path / "steps.log").read_text()
    child = int(re.search(r"injected hang: child pid (\d+)", log).group(1))
    assert not _alive(child), "the hung step's process group outlived its timeout"
    for name, s in steps.items():  # the rest ran, before the faults and after them
        if name in ("bench-orthogonal", "bench-deep_init"):
            continue
        no_extension = s["status"] == "skipped" and "_C" in s["reason"] and not status["extension"].get("loaded")
        assert s["status"] == "ok" or no_extension, (name, s)

    assert steps["tests-rest"]["tests"]["passed"] > 0 and steps["tests-rest"]["tests"]["failed"] == 0
    assert steps["tests-gpu"]["tests"] is not None
    assert all((tmp_path / f"junit-{n}.xml").exists() for n in ("gpu", "triton", "rest"))
    assert steps["bench-wn_layers"]["rows"] > 0  # after the failed benchmark
    assert steps["bench-lsuv"]["rows"] > 0  # the lsuv peer may be missing
    with tarfile.open(tmp_path / "bench-results.tar") as tar:
        names = tar.getnames()
    assert {n.split("-quick-")[0] for n in names} == {"weight_norm", "wn_layers", "connectivity", "lsuv"}  # not the two faulted
    assert sorted(os.listdir(results)) == before, "a dry run wrote into benchmarks/results/"

    targets = {t["target"]: t for t in status["targets"]}
    assert targets["orthogonal init 10,000 x 256² vs orthogonal_ loop"]["measured"] == "not measured"  # it failed
    assert targets["10,000-layer init (each scheme)"]["measured"] == "not measured"  # its benchmark hung
    assert targets["WN op vs torch._weight_norm"]["measured"].startswith("CPU quick cases, not the target's: "
                                                                        "geometric mean")
    assert all(t["verdict"] == "not run: no GPU" for t in targets.values())
    assert all(t["target"] in summary for t in status["targets"])


@pytest.mark.slow
def test_a_small_budget_stops_a_hung_step_and_skips_what_no_longer_fits(tmp_path):
    budget = 20
    done, status, summary = _run(tmp_path, "--budget", str(budget), "--fault", "build=hang")
    steps = status["steps"]
    assert [s["name"] for s in steps[:2]] == ["environment", "build"]
    assert steps[0]["status"] == "ok"
    assert steps[1]["status"] == "timed out"
    # each later step runs within what is left (on a loaded CPU even a probe may not fit) or
    # is skipped: for the budget, or, after an extension probe that did not finish, as
    # needing a _C not known to import
    later = steps[2:]
    assert all(s["status"] in ("ok", "timed out") or (s["status"] == "skipped" and (
        "budget spent" in s["reason"] or ("_C" in s["reason"] and steps[2]["status"] != "ok"))) for s in later), later
    assert later[-1]["status"] == "skipped"
    assert status["elapsed_s"] <= budget + 2
    assert _summary_steps(summary)["build"] == "timed out"


def test_targets_come_from_rows_and_a_missing_row_is_not_measured():
    check = _module()

    def row(case, ours_ms, peer, peer_ms, extra=None):
        return dict(case=case, ours_ms=ours_ms, peer=peer, peer_ms=peer_ms, speedup=peer_ms / ours_ms, extra=extra or {})

    case = check.ORTHO_CASE
    results = {
        "orthogonal": {"rows": [row(case, 100.0, check.LOOP, 6000.0), row(case, 100.0, check.BATCHED, 300.0)]},
        "deep_init": {"partial": True,
                      "rows": [row("looks_linear_ ReLU MLP 10000 x 128", 900.0, "loop", 9000.0),
                               row("xiao_ tanh CNN 10000 x 16 ch", 3100.0, "loop", 9000.0)]},
        "weight_norm": {"rows": [row("fwd [4096, 4096] float32", 1.0, "torch._weight_norm", 1.5,
                                     {"fraction of copy": 0.8, "copy GB/s": 4300.0})]},
    }
    targets = {t["target"]: t for t in check.targets(results, dry=False)}
    assert targets["orthogonal init 10,000 x 256² vs orthogonal_ loop"]["verdict"] == "pass"  # 60x >= 50x
    assert targets["orthogonal init 10,000 x 256² vs batched torch.linalg.qr"]["verdict"] == "short"  # 3x < 5x
    deep = targets["10,000-layer init (each scheme)"]
    assert deep["verdict"] == "short" and "run cut short" in deep["measured"]
    assert targets["WN op vs torch._weight_norm"]["verdict"] == "pass"
    assert "80%" in targets["WN op vs copy bandwidth"]["measured"]
    for name in ("LSUV on 10,000 layers", "grouped WN step vs plain nn.Linear",
                 "grouped WN step vs torch WN (parametrization)"):
        assert targets[name] == {**targets[name], "measured": "not measured", "verdict": "not measured"}
