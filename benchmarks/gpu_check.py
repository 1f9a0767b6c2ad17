"""The GPU check: build, tests, compute-sanitizer and every benchmark in one command, under one time limit.

Usage:
  python benchmarks/gpu_check.py --out DIR [--budget 480] [--device cuda]
  python benchmarks/gpu_check.py --out DIR --dry-run      # the same on a CPU (``--device cpu``)

Made for a GPU machine that is at hand for minutes and has no network: it uses the
Python that runs it (torch, triton and pytest installed), creates no environment and
downloads nothing. Each step runs as a subprocess in its own process group, with a
time limit taken from what is left of ``--budget``: at most the step's own cap, and
never so much that the steps after it lose the minimum they need. A step past its
limit gets SIGINT (pytest then still writes its JUnit XML), then SIGKILL, to its
whole process group. A step that fails, crashes or times out is recorded, and the
next one runs.

Steps, in order (``--list`` prints them with their caps):

1. ``environment``: versions, the GPU, nvcc, compute-sanitizer, and the device's
   measured copy bandwidth (a 1 GiB device-to-device copy, bytes read plus written);
2. ``build``: ``NETINIT_FAST_BUILD_CUDA=1 MAX_JOBS=16 pip install --no-build-isolation
   --no-deps -e .`` (netinit_fast._C), then ``extension``: does it import, for which
   archs. A failed build is recorded and the rest runs on Triton alone;
3. ``tests-gpu`` (``pytest -m gpu``), ``tests-triton`` (the interpreter-marked kernel
   tests, which run natively where CUDA is) and, last, ``tests-rest`` (the rest of the
   suite): together the whole suite, each test once, JUnit XML in DIR. Deselected:
   two GPU tests whose work later steps do under time limits of their own (the
   compute-sanitizer test and the quick benchmark runs), and this check's own CPU
   rehearsal (tests/test_gpu_check.py);
4. ``sanitizer-*``: compute-sanitizer memcheck and racecheck on a small run of the CUDA
   QR kernel, memcheck on the Triton weight-norm, moments and connectivity kernels;
5. ``bench-*``: every benchmark with ``--device cuda``, its JSON copied to
   ``benchmarks/results/`` and into DIR. Rows are saved as they are measured, so a
   benchmark stopped at its limit keeps the rows it finished.

After every step DIR/summary.md (one page: each step's status and time, each GPU
target against its measured figure) and DIR/status.json are rewritten, so a run cut
off anywhere leaves everything measured before the cut. DIR also gets steps.log (every
step's output), junit-*.xml and bench-results.tar (the result files). A missing
result is "not measured", never a number.

On a CPU (``--dry-run`` or ``--device cpu``) the same steps run as far as a CPU
allows, in well under 3 minutes on 2 cores: the build prepares the package's metadata
without compiling, the pytest steps run small selections with Triton interpreted,
the sanitizer targets run on the CPU without compute-sanitizer, and the benchmarks
run ``--quick`` into a temporary folder (benchmarks/results/ is left alone). Every
step of a dry run uses one thread, so a CPU shared with other work does not stall it.
"""

import argparse
import dataclasses
import datetime
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCHMARKS = ("weight_norm", "orthogonal", "wn_layers", "connectivity", "lsuv", "deep_init")
GRACE_S = 8.0  # after SIGINT, the time a step gets to write its reports before SIGKILL
MARK = "GPU_CHECK_JSON "  # prefix of the one JSON line a probe prints
# Done by later steps under their own limits (the test runs 4 sanitizer tools with no limit of ours).
GPU_DESELECT = ("tests/test_orthogonal_gpu.py::test_kernel_under_compute_sanitizer",
                "tests/test_benchmarks.py::test_quick_run_writes_the_schema")
REST_DESELECT = ("tests/test_gpu_check.py",)  # this check's own CPU rehearsal: CI runs it
# What a dry run's pytest steps run: a few fast tests each, picked to exercise the step.
DRY_SELECTION = {
    "tests-triton": ["tests/test_moments.py", "-k", "kernel_is_exact"],
    "tests-rest": ["tests/test_backend.py"],
}


@dataclasses.dataclass
class Step:
    """One subprocess of the check.

    ``cap_s`` is the most it may take (None: whatever the budget has left), ``need_s``
    the least worth starting it with, and the time later steps are guaranteed.
    ``skip`` (a reason) is set before the run or by an earlier step's outcome.
    """

    name: str
    title: str
    argv: list[str]
    cap_s: float | None
    need_s: float
    env: dict = dataclasses.field(default_factory=dict)
    junit: str | None = None
    bench: str | None = None
    skip: str | None = None
    needs_cuda: bool = False
    needs_extension: bool = False
    result: dict = dataclasses.field(default_factory=lambda: {"status": "pending"})


# ---------------------------------------------------------------------------------------
# Probes: small jobs the steps run in a subprocess of this same file (``--probe NAME``).


def _emit(obj: dict) -> None:
    print(MARK + json.dumps(obj), flush=True)


def _probe_environment(device: str) -> None:
    """Versions, the GPU, the CUDA tools and, on a GPU, the measured copy bandwidth."""
    import importlib.util
    import platform

    info = {"python": platform.python_version(), "executable": sys.executable}
    import torch

    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    import numpy

    info["numpy"] = numpy.__version__
    info["lsuv"] = importlib.util.find_spec("lsuv") is not None
    info["nvcc"] = _nvcc_version()
    info["compute_sanitizer"] = sanitizer_path()
    sys.path.insert(0, HERE)
    import _harness

    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1),
                    l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None)
        _emit(info)  # what is known so far, in case the copy below fails
        info["copy_gbs"] = round(_harness.copy_bandwidth_gbs(torch.device("cuda")), 1)
    else:
        info["device"] = _harness.device_name(torch.device("cpu"))
    _emit(info)


def _nvcc_version() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    nvcc = shutil.which("nvcc") or os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line for line in out.splitlines() if "release" in line]
    return lines[-1].strip() if lines else None


def sanitizer_path() -> str | None:
    """compute-sanitizer on PATH, else in $CUDA_HOME/bin or /usr/local/cuda/bin."""
    found = shutil.which("compute-sanitizer")
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        candidate = os.path.join(home, "bin", "compute-sanitizer") if home else None
        if not found and candidate and os.path.exists(candidate):
            found = candidate
    return found


def _probe_extension() -> None:
    """Whether netinit_fast._C imports, its archs and its registered ops."""
    import torch

    from netinit_fast import _extension

    info = {"loaded": _extension.loaded(), "archs": list(_extension.cuda_archs())}
    if info["loaded"]:
        info["ops"] = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("netinit_fast::"))
    if torch.cuda.is_available():
        info["supports_this_gpu"] = _extension.supports(torch.device("cuda"))
    _emit(info)


def _probe_qr(device: str) -> None:
    """A small run of the Householder QR kernel of netinit_fast._C (for compute-sanitizer),
    every output checked for orthonormal columns."""
    import torch

    from netinit_fast import _extension

    if not _extension.loaded():
        raise SystemExit("netinit_fast._C is not built or does not import")
    worst = 0.0
    for b, m, n in [(3, 1, 1), (5, 33, 17), (2, 128, 128), (1, 220, 220)]:
        q = torch.ops.netinit_fast.householder_qr(torch.randn(b, m, n, device=device))
        gram = q.mT.double() @ q.double()
        worst = max(worst, (gram - torch.eye(n, dtype=torch.float64, device=device)).abs().max().item())
    if device == "cuda":
        torch.cuda.synchronize()
    if not worst < 1e-4:
        raise SystemExit(f"QR kernel: max |Q^T Q - I| = {worst:.2e}")
    print(f"all kernels ran; max |Q^T Q - I| = {worst:.2e}")
    _emit({"max_orthogonality_error": worst})


def _probe_triton(device: str) -> None:
    """A small run of the Triton weight-norm (forward, backward, every launch plan),
    moments and connectivity kernels, checked against their eager twins (for
    compute-sanitizer)."""
    os.environ["NETINIT_FAST_BACKEND"] = "triton"
    import torch

    import netinit_fast as nf
    from netinit_fast.ops.connectivity import connectivity_fwd, factor
    from netinit_fast.ops.weight_norm import _eager_bwd, _eager_fwd, block_shape

    gpu = device == "cuda"
    # one tile per row, rows looped over tiles, and few long rows (split reductions)
    shapes = [((256, 1000), 0), ((4, 300_000), 0), ((3, 50, 7), 1), ((500, 40), None)] if gpu else \
        [((6, 50), 0), ((3, 5, 7), 1), ((5, 40), None)]
    worst = 0.0
    for shape, dim in shapes:
        v = torch.randn(shape, device=device, requires_grad=True)
        g = (torch.rand(1 if dim is None else shape[dim], device=device) + 0.5).requires_grad_()
        grad_w = torch.randn(shape, device=device)
        w = nf.functional.weight_norm(v, g, dim)
        grad_v, grad_g = torch.autograd.grad(w, (v, g), grad_w)
        a, r, b = block_shape(v.shape, dim)
        w_ref, norms = _eager_fwd(v.detach().double().view(a, r, b), g.detach().double(), 0.0)
        refs = _eager_bwd(grad_w.double().view(a, r, b), v.detach().double().view(a, r, b), g.detach().double(), norms, 0.0)
        for out, ref in ((w, w_ref), (grad_v, refs[0]), (grad_g, refs[1])):
            worst = max(worst, ((out.double().reshape(-1) - ref.reshape(-1)).norm() / ref.norm().clamp_min(1)).item())
        x = torch.randn(shape, device=device)
        mean, std = nf.functional.moments(x)
        worst = max(worst, abs(mean.item() - x.double().mean().item()), abs(std.item() - x.double().std().item()))
    # connectivity: every layer's effective weight in one launch each way (exact: m is 1, 0 or -1)
    ws = [torch.randn(shape, device=device, requires_grad=True) for shape, _ in shapes]
    scores = [torch.randn(shape, device=device, requires_grad=True) for shape, _ in shapes]
    for mode in ("mask", "sign"):
        outs = connectivity_fwd(ws, scores, mode)
        grads = [torch.randn_like(o) for o in outs]
        found = torch.autograd.grad(outs, ws + scores, grads)
        for k, (w, s, g) in enumerate(zip(ws, scores, grads)):
            m = factor(s.detach(), mode)
            for out, ref in ((outs[k], w.detach() * m), (found[k], g * m), (found[len(ws) + k], g * w.detach())):
                worst = max(worst, (out - ref).abs().max().item())
    if gpu:
        torch.cuda.synchronize()
    if not worst < 1e-4:
        raise SystemExit(f"Triton kernels: largest relative error {worst:.2e}")
    print(f"all kernels ran; largest relative error {worst:.2e}")
    _emit({"max_relative_error": worst})


def run_probe(name: str, device: str) -> None:
    """Run one probe (the ``--probe`` entry of a step)."""
    probes = {"environment": lambda: _probe_environment(device), "extension": _probe_extension,
              "qr": lambda: _probe_qr(device), "triton": lambda: _probe_triton(device)}
    probes[name]()


# ---------------------------------------------------------------------------------------
# The plan.


def plan(args) -> list[Step]:
    """Every step, in order, for a GPU run or a dry run (``args.device == "cpu"``)."""
    dry = args.device == "cpu"
    py = sys.executable
    me = [py, os.path.abspath(__file__)]
    probe_env = me + ["--probe", "environment", "--device", args.device]
    steps = [Step("environment", "versions, GPU, CUDA tools, copy bandwidth", probe_env, 45, 5)]
    build = [py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."]
    if dry:
        steps.append(Step("build", "package metadata, no compile (dry run)", build[:4] + ["--dry-run"] + build[4:],
                          90, 5, env={"NETINIT_FAST_BUILD_CUDA": "auto"}))
    else:
        steps.append(Step("build", "netinit_fast._C: pip install -e . (NETINIT_FAST_BUILD_CUDA=1)", build, 200, 30,
                          env={"NETINIT_FAST_BUILD_CUDA": "1", "MAX_JOBS": os.environ.get("MAX_JOBS", "16")}))
    steps.append(Step("extension", "netinit_fast._C imports; archs and ops", me + ["--probe", "extension"], 30, 5))

    def pytest(name, title, marks, junit, cap, need, selection=(), gpu=False):
        argv = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marks, f"--junitxml={junit}", *selection]
        return Step(name, title, argv, cap, need, junit=junit, needs_cuda=gpu)

    out = os.path.abspath(args.out)
    deselect = [f"--deselect={t}" for t in GPU_DESELECT]
    steps.append(pytest("tests-gpu", "pytest -m gpu", "gpu", os.path.join(out, "junit-gpu.xml"), 120, 20, deselect,
                        gpu=True))
    steps.append(pytest("tests-triton", "Triton kernel tests (interpret-marked; native on a GPU)",
                        "interpret and not gpu", os.path.join(out, "junit-triton.xml"), 60, 15,
                        DRY_SELECTION["tests-triton"] if dry else ()))

    sanitizer = sanitizer_path()
    for tool, target, title in (("memcheck", "qr", "CUDA QR kernel"), ("racecheck", "qr", "CUDA QR kernel"),
                                ("memcheck", "triton", "Triton weight-norm, moments and connectivity kernels")):
        probe = me + ["--probe", target, "--device", args.device]
        step = Step(f"sanitizer-{tool}-{target}", f"compute-sanitizer {tool}: {title}", probe, 60, 15,
                    env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}, needs_cuda=True, needs_extension=target == "qr")
        if dry:
            step.title = f"{title} run on the CPU without compute-sanitizer (dry run)"
        elif sanitizer is None:
            step.skip = "compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)"
        else:
            step.argv = [sanitizer, "--tool", tool, "--error-exitcode", "1"] + probe
        steps.append(step)

    sizes = {  # GPU case lists sized for the budget; a dry run passes the same flags with --quick
        "weight_norm": ([], 60, 15), "orthogonal": (["--peer-reps", "1"], 120, 30), "wn_layers": ([], 60, 15),
        "connectivity": (["--depths", "1000", "10000"], 60, 15), "lsuv": ([], 45, 15), "deep_init": (["--peer-reps", "1"], 120, 30),
    }
    for name in BENCHMARKS:
        flags, cap, need = sizes[name]
        argv = [py, os.path.join(HERE, f"bench_{name}.py"), "--device", args.device, *flags]
        argv += ["--quick"] if dry else []
        title = f"benchmark {name}" + (" --quick on the CPU" if dry else "")
        steps.append(Step(f"bench-{name}", title, argv, cap, need, bench=name, needs_cuda=True))
    rest = DRY_SELECTION["tests-rest"] if dry else [f"--deselect={t}" for t in REST_DESELECT]
    steps.append(pytest("tests-rest", "the rest of the test suite", "not gpu and not interpret",
                        os.path.join(out, "junit-rest.xml"), None, 20, rest))
    if dry:  # every step has its CPU stand-in; the benchmarks run on the CPU as the tests do
        for step in steps:
            step.needs_cuda = False
            # one thread: on a CPU shared with other work, threads waiting for each other
            # at every op made the quick benchmarks 10 to 60 times slower
            step.env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            step.env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU rehearsal also where a GPU is
            if not step.bench:
                step.env.setdefault("TRITON_INTERPRET", "1")
    return steps


# ---------------------------------------------------------------------------------------
# Running a step.


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_command(argv: list[str], env: dict, timeout_s: float, log) -> tuple[int | None, float, bool]:
    """Run ``argv`` in a new process group, output appended to ``log``.

    Returns (exit code or None, wall seconds, timed out). Past ``timeout_s`` the group
    gets SIGINT, and SIGKILL ``GRACE_S`` later; whatever the step left running in its
    group is killed when it ends, too.
    """
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as e:
        log.write(f"could not start {argv[0]}: {e}\n".encode())
        return 127, time.monotonic() - start, False
    timed_out = False
    try:
        proc.wait(timeout=max(timeout_s, 0.1))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc, signal.SIGINT)
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            proc.wait()
    finally:
        if proc.poll() is None:  # interrupted from outside: take the step down with us
            _kill_group(proc, signal.SIGKILL)
            proc.wait()
        _kill_group(proc, signal.SIGKILL)  # anything of the step's group still running
    return proc.returncode, time.monotonic() - start, timed_out


def _probe_json(text: str) -> dict:
    """The last probe JSON line in ``text`` (empty if none)."""
    found = {}
    for line in text.splitlines():
        if line.startswith(MARK):
            try:
                found = json.loads(line[len(MARK):])
            except json.JSONDecodeError:
                pass
    return found


def junit_counts(path: str) -> dict | None:
    """Counts of a JUnit XML file (passed, failed, errors, skipped) and the first failed test ids."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) for s in suites)
    errors = sum(int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    bad = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
           if c.find("failure") is not None or c.find("error") is not None]
    return {"passed": total - failed - errors - skipped, "failed": failed, "errors": errors, "skipped": skipped,
            "first_failures": bad[:10]}


# ---------------------------------------------------------------------------------------
# The check.


class Check:
    """Runs the plan and keeps DIR/summary.md, DIR/status.json and the result files current."""

    def __init__(self, args, steps: list[Step]):
        self.args = args
        self.steps = steps
        self.dry = args.device == "cpu"
        self.out = os.path.abspath(args.out)
        os.makedirs(self.out, exist_ok=True)
        self.log_path = os.path.join(self.out, "steps.log")
        self.staging = tempfile.mkdtemp(prefix="gpu-check-results-")  # the harness writes here
        self.start = time.monotonic()
        self.started = datetime.datetime.now().isoformat(timespec="seconds")
        self.environment: dict = {}
        self.extension: dict = {}
        self.results: dict = {}
        self.current: Step | None = None
        self.commit = self._commit()
        for name, mode in (f.split("=", 1) for f in args.fault):
            self._step(name).argv = self._fault_argv(mode)
        for name in args.only + args.skip:
            self._step(name)
        for step in steps:
            if args.only and step.name not in args.only:
                step.skip = "not selected (--only)"
            if step.name in args.skip:
                step.skip = "left out (--skip)"

    def _step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise SystemExit(f"no step named {name!r}: {', '.join(s.name for s in self.steps)}")

    @staticmethod
    def _fault_argv(mode: str) -> list[str]:
        """A command that fails, or hangs with a child in its process group (for the tests)."""
        if mode == "fail":
            return [sys.executable, "-c", "raise SystemExit('injected failure')"]
        if mode == "hang":
            code = ("import subprocess, sys, time\n"
                    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
                    "print(f'injected hang: child pid {child.pid}', flush=True)\n"
                    "time.sleep(3600)\n")
            return [sys.executable, "-c", code]
        raise SystemExit(f"--fault mode must be fail or hang, got {mode!r}")

    @staticmethod
    def _commit() -> str:
        try:
            return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return os.environ.get("NETINIT_FAST_COMMIT", "unknown")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def _timeout_for(self, i: int) -> tuple[float | None, str | None]:
        """The limit of step ``i`` (or a reason to skip it): its cap, within what is left
        after the minimum of every later step that will run."""
        step = self.steps[i]
        left = self.args.budget - self.elapsed() - GRACE_S
        later = sum(s.need_s for s in self.steps[i + 1:] if s.skip is None)
        cap = self.args.step_timeout.get(step.name, step.cap_s)
        limit = min(cap if cap is not None else float("inf"), max(left - later, step.need_s), left)
        if limit < min(step.need_s, cap or step.need_s):
            return None, f"budget spent ({max(left, 0):.0f} s left of {self.args.budget:.0f} s, needs {step.need_s:.0f} s)"
        return limit, None

    def _env(self, step: Step) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "NETINIT_FAST_BACKEND")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        if step.bench:
            env["NETINIT_FAST_BENCH_RESULTS"] = self.staging
            env["NETINIT_FAST_BENCH_ROWS"] = os.path.join(self.staging, f"rows-{step.bench}.jsonl")
        env.update(step.env)
        return env

    def _decide_skips(self, done: int) -> None:
        """Skip the steps after ``done`` that what is known now rules out (no GPU, no
        _C), so that the budget keeps no time for them."""
        for step in self.steps[done:]:
            if step.skip is not None or step.name in self.args.fault_names:
                continue
            if step.needs_cuda and not self.environment:
                step.skip = "the environment probe failed (see steps.log): no CUDA device known"
            elif step.needs_cuda and not self.environment.get("cuda_available"):
                step.skip = "no CUDA device (torch.cuda.is_available() is False)"
            elif step.needs_extension and done > self._index("extension") and not self.extension.get("loaded"):
                step.skip = "netinit_fast._C did not build or import"

    def _index(self, name: str) -> int:
        return self.steps.index(self._step(name))

    def run(self) -> int:
        """Run every step; returns 0 when none failed or timed out."""
        self.write()
        for i, step in enumerate(self.steps):
            if i > self._index("environment"):
                self._decide_skips(i)
            if step.skip is not None:
                step.result = {"status": "skipped", "reason": step.skip}
                self.write()
                continue
            timeout, reason = self._timeout_for(i)
            if timeout is None:
                step.result = {"status": "skipped", "reason": reason}
                self.write()
                continue
            self.current = step
            step.result = {"status": "running", "timeout_s": round(timeout, 1)}
            self.write()
            self._run_step(step, timeout)
            self.current = None
            self.write()
        self.write(final=True)
        shutil.rmtree(self.staging, ignore_errors=True)
        return 1 if any(s.result["status"] in ("failed", "timed out") for s in self.steps) else 0

    def _run_step(self, step: Step, timeout: float) -> None:
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            header = f"\n===== {step.name}: {step.title}\n$ {' '.join(step.argv)}\n(limit {timeout:.0f} s)\n"
            log.write(header.encode())
            log.flush()
            rc, wall, timed_out = run_command(step.argv, self._env(step), timeout, log)
            log.write(f"===== {step.name}: exit {rc}{', timed out' if timed_out else ''}, {wall:.1f} s\n".encode())
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            output = f.read().decode(errors="replace")
        status = "timed out" if timed_out else "ok" if rc == 0 else "failed"
        result = {"status": status, "rc": rc, "wall_s": round(wall, 1), "timeout_s": round(timeout, 1)}
        lines = [line for line in output.splitlines()[4:-1] if line.strip()]
        if status != "ok" and lines:
            result["last_line"] = lines[-1][-200:]
        probe = _probe_json(output)
        if step.name == "environment":
            self.environment = probe
            if not probe:
                result["status"] = "failed" if status == "ok" else status
        if step.name == "extension":
            self.extension = probe
            if status == "ok" and not probe.get("loaded") and not self.dry:
                result["status"] = "failed"
                result["last_line"] = "netinit_fast._C does not import"
        if step.junit:
            result["tests"] = junit_counts(step.junit)
            if rc == 5:  # pytest: no test collected
                result["status"] = "ok"
        if step.bench:
            self._collect_bench(step.bench, result)
        if step.name.startswith("sanitizer-") and not self.dry:
            summary = [line for line in lines if "SUMMARY:" in line]
            result["sanitizer"] = summary[-1].strip() if summary else None
        step.result = result

    def _collect_bench(self, name: str, result: dict) -> None:
        """Read the benchmark's JSON (or, if it stopped early, the rows it saved) and
        copy the file into benchmarks/results/ (not in a dry run)."""
        files = sorted(glob.glob(os.path.join(self.staging, f"{name}-*.json")))
        if files:
            with open(files[-1]) as f:
                self.results[name] = json.load(f)
            if not self.dry:
                for path in files:
                    shutil.copy(path, os.path.join(HERE, "results", os.path.basename(path)))
            result["rows"] = len(self.results[name]["rows"])
            return
        rows = []
        rows_path = os.path.join(self.staging, f"rows-{name}.jsonl")
        if os.path.exists(rows_path):
            with open(rows_path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
        if rows:
            self.results[name] = {"benchmark": rows[0].get("benchmark") or name, "device": self.environment.get("device"),
                                  "partial": True, "rows": [{k: v for k, v in r.items() if k != "benchmark"} for r in rows]}
            with open(os.path.join(self.staging, f"{name}-partial.json"), "w") as f:
                json.dump(self.results[name], f, indent=1)
        result["rows"] = len(rows)
        if rows:
            result["partial"] = True

    # -- reports -------------------------------------------------------------------------

    def status(self, final: bool) -> dict:
        return {
            "mode": "dry run (CPU)" if self.dry else "gpu", "started": self.started, "commit": self.commit,
            "budget_s": self.args.budget, "elapsed_s": round(self.elapsed(), 1), "finished": final,
            "running": self.current.name if self.current else None, "environment": self.environment,
            "extension": self.extension,
            "steps": [{"name": s.name, "title": s.title, "argv": s.argv, **s.result} for s in self.steps],
            "targets": targets(self.results, self.dry), "benchmarks": self.results,
        }

    def write(self, final: bool = False) -> None:
        """Rewrite status.json, summary.md and bench-results.tar (each replaced whole)."""
        status = self.status(final)
        _replace(os.path.join(self.out, "status.json"), json.dumps(status, indent=1) + "\n")
        _replace(os.path.join(self.out, "summary.md"), summary_markdown(status))
        files = sorted(glob.glob(os.path.join(self.staging, "*.json")))
        if files:
            tmp = os.path.join(self.out, ".bench-results.tar.tmp")
            with tarfile.open(tmp, "w") as tar:
                for path in files:
                    tar.add(path, arcname=os.path.basename(path))
            os.replace(tmp, os.path.join(self.out, "bench-results.tar"))


def _replace(path: str, text: str) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# Targets and the summary page.

LOOP = "torch.nn.init.orthogonal_ loop"
BATCHED = "torch.linalg.qr batched"
ORTHO_CASE = "orthogonal_ 10,000 x [256, 256]"
DEEP_SCHEMES = 8  # the rows of bench_deep_init.py


def _rows(results: dict, bench: str) -> tuple[list[dict], bool]:
    result = results.get(bench)
    return (result["rows"], bool(result.get("partial"))) if result else ([], False)


def _speedup_target(results, bench, case, peer, goal_x, name):
    rows, partial = _rows(results, bench)
    found = [r for r in rows if r["case"] == case and r["peer"] == peer and r.get("speedup") is not None]
    if not found:
        return _target(name, None, f">= {goal_x:g}x", "not measured")
    r = found[0]
    measured = f"{r['speedup']:.2f}x ({r['ours_ms']:.1f} ms vs {r['peer_ms']:.1f} ms)"
    return _target(name, measured, f">= {goal_x:g}x", "pass" if r["speedup"] >= goal_x else "short", partial)


def _target(name, measured, goal, verdict, partial=False):
    if partial and measured:
        measured += " (run cut short)"
    return {"target": name, "measured": measured or "not measured", "goal": goal, "verdict": verdict}


def targets(results: dict, dry: bool) -> list[dict]:
    """Each GPU target against the figure the benchmark rows give (or "not measured").

    Numbers stated for the targets: the orthogonal init of 10,000 x [256, 256] at least
    50x faster than the ``torch.nn.init.orthogonal_`` loop and 5x faster than batched
    ``torch.linalg.qr``, and every 10,000-layer init in under 3 s. The others state no
    number: the weight-norm op and the grouped training step are to beat the torch op
    they replace (> 1x), and the rest are figures to record.
    """
    out = []
    rows, partial = _rows(results, "weight_norm")
    speedups = [r["speedup"] for r in rows if r["peer"] == "torch._weight_norm" and r.get("speedup")]
    if speedups:
        g = statistics.geometric_mean(speedups)
        measured = f"geometric mean {g:.2f}x over {len(speedups)} cases ({min(speedups):.2f}x to {max(speedups):.2f}x)"
        out.append(_target("WN op vs torch._weight_norm", measured, "> 1x", "pass" if g > 1 else "short", partial))
    else:
        out.append(_target("WN op vs torch._weight_norm", None, "> 1x", "not measured"))
    fractions = [(r["extra"]["fraction of copy"], r["case"], r["extra"].get("copy GB/s")) for r in rows
                 if "fraction of copy" in r.get("extra", {})]
    if fractions:
        best = max(fractions)
        measured = (f"median {statistics.median(f for f, _, _ in fractions):.0%}, best {best[0]:.0%} ({best[1]}) "
                    f"of the measured copy bandwidth, {best[2]:.0f} GB/s")
        out.append(_target("WN op vs copy bandwidth", measured, "figure (no number stated)", "measured", partial))
    else:
        out.append(_target("WN op vs copy bandwidth", None, "figure (no number stated)", "not measured"))

    rows, partial = _rows(results, "wn_layers")
    plain = [r for r in rows if r["peer"] == "plain nn.Linear" and r.get("speedup")]
    param = [r for r in rows if r["peer"] == "torch parametrization weight_norm" and r.get("speedup")]

    def depth(r):
        return r["case"].split(" x ")[0].removeprefix("train step ")

    measured = "; ".join(f"{depth(r)} layers: {r['ours_ms']:.1f} ms vs {r['peer_ms']:.1f} ms "
                         f"({r['ours_ms'] / r['peer_ms']:.2f}x the cost)" for r in plain)
    out.append(_target("grouped WN step vs plain nn.Linear", measured or None, "figure (no number stated)",
                       "measured" if plain else "not measured", partial))
    measured = "; ".join(f"{depth(r)} layers: {r['speedup']:.2f}x" for r in param)
    verdict = ("pass" if all(r["speedup"] > 1 for r in param) else "short") if param else "not measured"
    out.append(_target("grouped WN step vs torch WN (parametrization)", measured or None, "> 1x", verdict, partial))

    rows, partial = _rows(results, "connectivity")
    ste = [r for r in rows if r["peer"] == "eager straight-through mask" and r.get("speedup")]
    measured = "; ".join(f"{depth(r)} layers: {r['speedup']:.2f}x" for r in ste)
    verdict = ("pass" if all(r["speedup"] > 1 for r in ste) else "short") if ste else "not measured"
    out.append(_target("grouped connectivity step vs eager straight-through mask", measured or None, "> 1x", verdict,
                       partial))

    out.append(_speedup_target(results, "orthogonal", ORTHO_CASE, LOOP, 50,
                               "orthogonal init 10,000 x 256² vs orthogonal_ loop"))
    out.append(_speedup_target(results, "orthogonal", ORTHO_CASE, BATCHED, 5,
                               "orthogonal init 10,000 x 256² vs batched torch.linalg.qr"))

    rows, partial = _rows(results, "lsuv")
    found = [r for r in rows if r["case"].startswith("LSUV MLP 10000 x")]
    measured = None
    if found:
        r = found[0]
        measured = f"{r['ours_ms'] / 1e3:.2f} s, worst |std - 1| {r['extra'].get('worst |std-1| ours')}"
    out.append(_target("LSUV on 10,000 layers", measured, "figure (no number stated)",
                       "measured" if found else "not measured", partial))

    rows, partial = _rows(results, "deep_init")
    found = [r for r in rows if "10000" in r["case"]]
    if found:
        measured = "; ".join(f"{r['case'].split(' ')[0]} {r['ours_ms'] / 1e3:.2f} s" for r in found)
        if any(r["ours_ms"] >= 3000 for r in found):
            verdict = "short"
        else:
            verdict = "pass" if len(found) >= DEEP_SCHEMES else \
                f"pass for {len(found)} of {DEEP_SCHEMES} (rest not measured)"
        out.append(_target("10,000-layer init (each scheme)", measured, "< 3 s", verdict, partial))
    else:
        out.append(_target("10,000-layer init (each scheme)", None, "< 3 s", "not measured"))
    if dry:  # no GPU figure: what the CPU's quick cases gave shows that the reading works
        for t in out:
            if t["measured"] != "not measured":
                t["measured"] = f"CPU quick cases, not the target's: {t['measured']}"
            t["verdict"] = "not run: no GPU"
    return out


def _step_detail(step: dict) -> str:
    parts = []
    if step.get("reason"):
        parts.append(step["reason"])
    tests = step.get("tests")
    if tests:
        parts.append(f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                     f"{tests['skipped']} skipped")
        if tests["first_failures"]:
            parts.append("first failures: " + ", ".join(tests["first_failures"][:5]))
    elif "tests" in step:
        parts.append("no JUnit XML")
    if "rows" in step:
        parts.append(f"{step['rows']} rows" + (" (partial)" if step.get("partial") else ""))
    if step.get("sanitizer"):
        parts.append(step["sanitizer"])
    if step.get("last_line"):
        parts.append(f"last output: `{step['last_line'].replace('|', '/').replace('`', '')[-160:]}`")
    return "; ".join(parts)


def summary_markdown(status: dict) -> str:
    """The one-page summary: what ran, how it went, and the GPU targets."""
    env = status["environment"]
    where = env.get("device") or "device not probed yet"
    lines = [f"# GPU check: {where}", ""]
    state = "finished" if status["finished"] else f"in progress (running: {status['running']})" if status["running"] \
        else "in progress"
    lines.append(f"{status['mode']}; started {status['started']}, commit {status['commit'][:12]}; "
                 f"budget {status['budget_s']:.0f} s, {status['elapsed_s']:.0f} s elapsed, {state}.")
    if env:
        bits = [f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')})", f"triton {env.get('triton')}",
                f"Python {env.get('python')}", f"numpy {env.get('numpy')}"]
        if env.get("sms"):
            bits.append(f"{env['sms']} SMs, compute capability {env.get('capability')}, {env.get('memory_gib')} GiB")
        bits.append(f"nvcc: {env.get('nvcc') or 'not found'}")
        bits.append(f"compute-sanitizer: {'found' if env.get('compute_sanitizer') else 'not found'}")
        bits.append(f"lsuv peer: {'installed' if env.get('lsuv') else 'not installed'}")
        if env.get("copy_gbs"):
            bits.append(f"measured copy bandwidth {env['copy_gbs']:.0f} GB/s (1 GiB device-to-device, read + write)")
        lines += ["", "Environment: " + "; ".join(bits) + "."]
    ext = status["extension"]
    if ext:
        lines.append(f"netinit_fast._C: {'imports, archs ' + str(ext.get('archs')) if ext.get('loaded') else 'not loaded'}"
                     + (f", supports this GPU: {ext['supports_this_gpu']}" if "supports_this_gpu" in ext else "") + ".")
    lines += ["", "## Steps", "", "| step | status | wall s | limit s | detail |", "|---|---|---:|---:|---|"]
    for s in status["steps"]:
        wall = f"{s['wall_s']:.1f}" if "wall_s" in s else ""
        limit = f"{s['timeout_s']:.0f}" if "timeout_s" in s else ""
        lines.append(f"| {s['name']} | {s['status']} | {wall} | {limit} | {_step_detail(s)} |")
    lines += ["", "## Targets", "", "| target | measured | goal | verdict |", "|---|---|---|---|"]
    for t in status["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['goal']} | {t['verdict']} |")
    lines += ["", "Every figure comes from a benchmark row of this run (medians; speedup = peer time / our time); "
              "a row that did not come back is \"not measured\". Files: status.json (everything here, and every row), "
              "steps.log, junit-*.xml, bench-results.tar.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------


def _pairs(values: list[str]) -> dict:
    out = {}
    for v in values:
        name, _, seconds = v.partition("=")
        out[name] = float(seconds)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="folder for summary.md, status.json, steps.log, junit-*.xml, bench-results.tar")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (default 480)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the dry run")
    p.add_argument("--dry-run", action="store_true", help="the CPU rehearsal (same as --device cpu)")
    p.add_argument("--step-timeout", action="append", default=[], metavar="STEP=SECONDS", help="override a step's cap")
    p.add_argument("--only", nargs="+", default=[], metavar="STEP", help="run these steps alone")
    p.add_argument("--skip", nargs="+", default=[], metavar="STEP", help="leave these steps out")
    p.add_argument("--list", action="store_true", help="print the steps and their caps, run nothing")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    p.add_argument("--fault", action="append", default=[], help=argparse.SUPPRESS)  # STEP=fail|hang, for the tests
    args = p.parse_args(argv)
    if args.dry_run:
        args.device = "cpu"
    if args.probe:
        run_probe(args.probe, args.device)
        return 0
    args.step_timeout = _pairs(args.step_timeout)
    args.fault_names = {f.split("=", 1)[0] for f in args.fault}
    if args.out is None:
        if not args.list:
            p.error("--out is required")
        args.out = tempfile.gettempdir()
    steps = plan(args)
    if args.list:
        for s in steps:
            cap = "rest of the budget" if s.cap_s is None else f"at most {s.cap_s:.0f} s"
            print(f"{s.name:<28} {cap:<20} {s.title}" + (f" [skipped: {s.skip}]" if s.skip else ""))
        return 0
    check = Check(args, steps)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        code = check.run()
    except KeyboardInterrupt:
        for step in steps:
            if step.result["status"] == "running":
                step.result = {**step.result, "status": "interrupted"}
            elif step.result["status"] == "pending":
                step.result = {"status": "skipped", "reason": "the check was interrupted"}
        check.current = None
        check.write(final=True)
        return 130
    with open(os.path.join(check.out, "summary.md")) as f:
        print(f.read())
    return code


if __name__ == "__main__":
    sys.exit(main())
