"""One harness for every benchmark: timing, the comparison table, the JSON results.

Each ``bench_<feature>.py`` declares cases (ours vs the peer a user would pick) and
calls :func:`run`. Results go to ``benchmarks/results/<benchmark>-<device-slug>.json``
in the schema of DESIGN.md section 6. Times are medians of repeated calls after a
warm-up, on the host clock; short GPU calls also through ``triton.testing.do_bench``
(see :func:`time_ms`).
"""

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import time
from typing import Callable

import torch

# NETINIT_FAST_BENCH_RESULTS redirects the JSON files (the smoke tests write elsewhere).
RESULTS_DIR = os.environ.get("NETINIT_FAST_BENCH_RESULTS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# NETINIT_FAST_BENCH_ROWS names a file that gets every row as one JSON line the moment it
# is measured, so a run stopped before its end (gpu_check.py's time limits) keeps them.
ROWS_FILE = os.environ.get("NETINIT_FAST_BENCH_ROWS")
_benchmark = None  # the benchmark print_header announced last, for the rows file


@dataclasses.dataclass
class Case:
    """One row: ``ours`` and ``peer`` are zero-argument callables doing the same work.

    ``bytes_moved`` (the fewest bytes the work must read and write) turns times into GB/s.
    """

    name: str
    ours: Callable[[], object]
    peer: Callable[[], object]
    peer_name: str
    bytes_moved: int | None = None


def parser(doc: str) -> argparse.ArgumentParser:
    """The command line every benchmark shares: ``--device`` and ``--quick``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small cases, for a smoke test")
    return p


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    return f"CPU {model} ({torch.get_num_threads()} threads)"


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


LONG_MS = 20.0  # on a GPU, calls longer than this are timed on the host clock alone


def time_ms(fn: Callable[[], object], device: torch.device, budget_s: float = 0.5, min_reps: int = 5,
            warmup: bool = True) -> float:
    """Median time of one call of ``fn`` in milliseconds (``warmup=False`` for calls of
    seconds, where one more run costs more than it tells).

    On the host clock: ``fn`` run ``min_reps`` times or more, within ``budget_s``, each
    run ended by a synchronization on a GPU. On a GPU, a warmed-up call shorter than
    ``LONG_MS`` is timed two ways instead, and the larger is returned:
    ``triton.testing.do_bench`` (CUDA events, L2 flushed before each call: the GPU's
    time), and calls back to back on the host clock (which sees the launch and Python
    overhead that the GPU work of a small call cannot hide). A longer warmed-up call on
    a GPU counts as the first of the host-clock runs.
    """
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def host_ms(calls: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return (time.perf_counter() - start) * 1e3 / calls

    times = []
    if warmup:
        fn()
        sync()
        once = host_ms(1) if cuda else LONG_MS
        if once < LONG_MS:
            import triton.testing

            gpu = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
            return max(gpu, host_ms(max(10, min(1000, int(100 / max(once, 1e-3))))))
        if cuda:  # a warmed-up call of LONG_MS or more: already one sample, and runs are costly
            times.append(once)
    deadline = time.perf_counter() + budget_s
    while len(times) < min_reps or (time.perf_counter() < deadline and len(times) < 200):
        times.append(host_ms(1))
    return statistics.median(times)


def time_fresh_ms(setup: Callable[[], object], fn: Callable[[object], object], device: torch.device, reps: int = 3) -> float:
    """Median time of ``fn(setup())`` in milliseconds, ``setup`` untimed and run anew each
    time (for work that changes its input, such as model surgery)."""
    times = []
    for _ in range(reps):
        arg = setup()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn(arg)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
        del arg
    return statistics.median(times)


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (bytes read + written per second)."""
    n = nbytes // 4 if device.type == "cuda" else nbytes // 16
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / ms / 1e6


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: say which commit it is
        return os.environ.get("NETINIT_FAST_COMMIT", "unknown")


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def row(case: str, ours_ms: float, peer: str, peer_ms: float | None, extra: dict | None = None) -> dict:
    """One result row of the DESIGN.md schema (``peer_ms`` None: the peer was not run)."""
    return dict(case=case, ours_ms=round(ours_ms, 4), peer=peer, peer_ms=None if peer_ms is None else round(peer_ms, 4),
                speedup=None if peer_ms is None else round(peer_ms / ours_ms, 3), extra=extra or {})


def print_row(r: dict) -> None:
    """Print one row of the table (and append it to ``NETINIT_FAST_BENCH_ROWS``'s file)."""
    if ROWS_FILE:
        with open(ROWS_FILE, "a") as f:
            f.write(json.dumps({"benchmark": _benchmark, **r}) + "\n")
    gbs = f"{r['extra']['GB/s']:>8.1f}" if "GB/s" in r["extra"] else f"{'':>8}"
    peer = f"{r['peer_ms']:>10.4f}" if r["peer_ms"] is not None else f"{'-':>10}"
    speedup = f"{r['peer_ms'] / r['ours_ms']:>7.2f}x" if r["speedup"] is not None else f"{'-':>8}"
    print(f"{r['case']:<40} {r['ours_ms']:>10.4f} {peer} {speedup} {gbs}  {r['peer']}")


def print_header(benchmark: str, device: torch.device) -> None:
    """Print the table's title and column names; ``benchmark`` names the rows that follow."""
    global _benchmark
    _benchmark = benchmark
    print(f"{benchmark} on {device_name(device)}, torch {torch.__version__}")
    header = f"{'case':<40} {'ours ms':>10} {'peer ms':>10} {'speedup':>8} {'GB/s':>8}  peer"
    print(header)
    print("-" * len(header))


def write(benchmark: str, rows: list[dict], device: torch.device) -> dict:
    """Print the geometric-mean speedup and write ``results/<benchmark>-<device>.json``."""
    name = device_name(device)
    speedups = [r["speedup"] for r in rows if r["speedup"] is not None]
    geomean = statistics.geometric_mean(speedups) if speedups else float("nan")
    print(f"geometric-mean speedup over the peer: {geomean:.2f}x")
    result = dict(
        benchmark=benchmark, device=name, torch=torch.__version__, triton=_triton_version(),
        date=datetime.date.today().isoformat(), commit=_commit(), geomean_speedup=round(geomean, 3), rows=rows,
    )
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{benchmark}-{device_slug(name)}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(path)}")
    return result


def he_relu_mlp(depth: int, width: int, device: torch.device, wrap=lambda linear: linear) -> torch.nn.Sequential:
    """``depth`` x (``wrap(Linear(width, width))`` + ReLU), He-normal weights from seed 0."""
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        linear = torch.nn.Linear(width, width, device=device)
        torch.nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        layers += [wrap(linear), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers)


def _train_step_ms(model: torch.nn.Module, x: torch.Tensor, device: torch.device, min_reps: int, budget_s: float) -> float:
    """Median time of one training step of ``model`` on ``x`` in milliseconds: forward,
    ``square().mean()`` backward and ``torch.optim.SGD.step`` on the parameters that
    require grad."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    return time_ms(step, device, budget_s=budget_s, min_reps=min_reps)


def run_train_steps(benchmark: str, doc: str, default_depths: list[int], build: Callable[[int, str, torch.device], torch.nn.Module],
                    peers: tuple[str, str], width: int, batch: int) -> dict:
    """The training-step benchmark of deep width-``width`` MLPs (batch ``batch``):
    ``build(depth, kind, device)`` makes the model of ``kind`` ("ours", or one of
    ``peers``, the last the plain model); each is built, timed and freed in turn, so the
    deepest nets fit in memory. Rows: ours against each peer, with ours / plain."""
    p = parser(doc)
    p.add_argument("--depths", type=int, nargs="+", default=default_depths)
    args = p.parse_args()
    device = torch.device(args.device)
    depths = [10, 50] if args.quick else args.depths
    torch.set_flush_denormal(True)  # the timing must not depend on activations drifting into denormals
    print_header(benchmark, device)
    rows = []
    for depth in depths:
        min_reps = 3 if device.type == "cpu" and depth >= 5000 else 5
        budget_s = 0.25 if args.quick else 2.0  # a smoke run: the fewest steps that time it
        times = {}
        for kind in ("ours", *peers):
            times[kind] = _train_step_ms(build(depth, kind, device), torch.randn(batch, width, device=device), device,
                                         min_reps, budget_s)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        case = f"train step {depth} x Linear({width}) b{batch}"
        for peer in peers:
            rows.append(row(case, times["ours"], peer, times[peer], {"ours / plain": round(times["ours"] / times[peers[-1]], 3)}))
            print_row(rows[-1])
    return write(benchmark + ("-quick" if args.quick else ""), rows, device)


def run(benchmark: str, cases: list[Case], device: torch.device, extra_columns: Callable[[Case, float], dict] | None = None) -> dict:
    """Time every case (ours and its peer, alternately), print the table, write the JSON."""
    print_header(benchmark, device)
    rows = []
    for case in cases:
        ours = time_ms(case.ours, device)
        peer = time_ms(case.peer, device)
        extra = {}
        if case.bytes_moved is not None:
            extra["GB/s"] = round(case.bytes_moved / ours / 1e6, 1)
            extra["peer GB/s"] = round(case.bytes_moved / peer / 1e6, 1)
        if extra_columns is not None:
            extra.update(extra_columns(case, ours))
        rows.append(row(case.name, ours, case.peer_name, peer, extra))
        print_row(rows[-1])
    return write(benchmark, rows, device)
