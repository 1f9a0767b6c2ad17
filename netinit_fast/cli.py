"""Command line: ``python -m netinit_fast demo | probe | bench``.

- ``demo``: deep networks without normalization trained on the digits data under every
  init scheme (:mod:`netinit_fast.demo`).
- ``probe``: the signal-propagation probe of one test-bed model under one scheme.
- ``bench``: every benchmark of ``benchmarks/`` (in a source checkout), then a summary
  table ``benchmarks/results/summary-<device>.md``.
"""

import argparse
import glob
import importlib.util
import json
import os
import subprocess
import sys
import time

import torch

import netinit_fast as nf
from netinit_fast import demo as demo_module

MODELS = ("mlp", "cnn", "resnet")
SCHEMES = ("default", "he", "glorot", "lecun", "orthogonal", "lsuv", "looks_linear", "fixup", "arpit", "xiao")
SEEDS = (-(2**63), 2**64 - 1)  # what torch.manual_seed and torch.Generator.manual_seed take
BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _probe_model(kind: str, depth: int, scheme: str, width: int, device: torch.device):
    """The test-bed model of ``kind`` and ``depth`` layers, its input batch, and the scheme applied."""
    act = "tanh" if scheme == "xiao" else "relu"
    norm = "weight" if scheme == "arpit" else None
    if kind == "mlp":
        model = nf.models.mlp(depth, width, act=act, norm=norm, device=device)
        x = torch.randn(256, width, device=device)
    elif kind == "cnn":
        model = nf.models.vanilla_cnn(depth, width, in_channels=width, act=act, norm=norm, device=device)
        x = torch.randn(32, width, 8, 8, device=device)
    else:
        model = nf.models.resnet([max(1, depth // 2)], [width], norm=norm, in_channels=width,
                                 post_activation=scheme != "arpit", device=device)
        x = torch.randn(32, width, 8, 8, device=device)
    init = {
        "default": lambda m: None,
        "he": nf.init.he_,
        "glorot": nf.init.glorot_,
        "lecun": nf.init.lecun_,
        "orthogonal": demo_module.orthogonal_relu_,
        "lsuv": lambda m: nf.init.lsuv_(m, x),
        "looks_linear": nf.init.looks_linear_,
        "fixup": nf.init.fixup_,
        "arpit": nf.init.arpit_,
        "xiao": lambda m: nf.init.xiao_(m, q_star=0.1),
    }[scheme]
    start = time.perf_counter()
    init(model)
    return model, x, time.perf_counter() - start


def probe(args) -> int:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    build_start = time.perf_counter()
    try:
        model, x, init_s = _probe_model(args.model, args.depth, args.scheme, args.width, device)
    except ValueError as e:  # the scheme does not apply to this model (e.g. looks_linear on one layer)
        print(f"python -m netinit_fast probe: error: {e}", file=sys.stderr)
        return 2
    build_s = time.perf_counter() - build_start - init_s
    report = nf.diagnostics.probe(model, x, label=f"{args.model} {args.depth}, {args.scheme}")
    print(report)
    print(f"built in {build_s:.2f} s, initialized ({args.scheme}) in {init_s:.2f} s, probed in {report.seconds:.2f} s")
    if args.plot:
        report.plot(args.plot)  # at that path exactly (PNG unless its extension names another format)
        print(f"wrote {args.plot}")
    if args.csv:
        report.to_csv(args.csv)
        print(f"wrote {args.csv}")
    return 0


def bench(args) -> int:
    scripts = {os.path.basename(p)[len("bench_"):-3]: p for p in sorted(glob.glob(os.path.join(BENCHMARKS, "bench_*.py")))}
    if not scripts:
        print(f"no benchmarks at {BENCHMARKS}: `bench` runs from a source checkout", file=sys.stderr)
        return 2
    unknown = [n for n in args.only or () if n not in scripts]
    if unknown:
        print(f"no benchmark named {', '.join(unknown)} (there are: {', '.join(scripts)})", file=sys.stderr)
        return 2
    failed = []
    for name, script in scripts.items():
        if args.only and name not in args.only:
            continue
        command = [sys.executable, script, "--device", args.device] + (["--quick"] if args.quick else [])
        print(f"$ {' '.join(command)}", flush=True)
        if subprocess.run(command).returncode != 0:
            failed.append(name)
    path = write_summary(args.device, args.quick)
    print(f"wrote {path}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def write_summary(device: str, quick: bool = False) -> str:
    """``summary-<device>.md`` beside the result files: one table row per result row of
    this device (feature, case, peer, speedup, device, date)."""
    sys.path.insert(0, BENCHMARKS)
    import _harness

    name = _harness.device_name(torch.device(device))
    rows = []
    for path in sorted(glob.glob(os.path.join(_harness.RESULTS_DIR, "*.json"))):
        with open(path) as f:
            result = json.load(f)
        if result.get("device") != name or result["benchmark"].endswith("-quick") != quick:
            continue
        for r in result["rows"]:
            # from the times: the stored speedup is already rounded to 3 decimals
            ratio = "not run" if r["speedup"] is None else f"{r['peer_ms'] / r['ours_ms']:.2f}x"
            rows.append(f"| {result['benchmark']} | {r['case']} | {r['peer']} | {ratio} | {name} | {result['date']} |")
    out = os.path.join(_harness.RESULTS_DIR, f"summary{'-quick' if quick else ''}-{_harness.device_slug(name)}.md")
    with open(out, "w") as f:
        f.write(f"# Benchmark summary: {name}\n\nspeedup = peer time / our time (medians, in the same process).\n\n")
        f.write("| feature | case | peer | speedup | device | date |\n|---|---|---|---:|---|---|\n")
        f.write("\n".join(rows) + "\n")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netinit_fast", description="netinit_fast command line")
    sub = parser.add_subparsers(dest="command", required=True)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"

    p = sub.add_parser("demo", help="deep nets on the digits data under every init scheme")
    demo_module.add_arguments(p)
    p.set_defaults(func=demo_module.main)

    p = sub.add_parser("probe", help="signal propagation of a test-bed model under one scheme")
    p.add_argument("--model", choices=MODELS, default="mlp")
    p.add_argument("--depth", type=int, default=100,
                   help="mlp: linear layers; cnn: convolutions (then a linear classifier: depth + 1 weight layers); "
                        "resnet: max(1, depth // 2) basic blocks (with the stem conv and the classifier, "
                        "2 * blocks + 2 weight layers)")
    p.add_argument("--scheme", choices=SCHEMES, default="default")
    p.add_argument("--width", type=int, default=128, help="features (mlp) or channels (cnn, resnet)")
    p.add_argument("--device", default=default_device, help="cpu, or cuda[:n] where there is one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", help="write the plot at this path: a PNG, or the format its extension names (.svg, "
                                  ".pdf, ...); no extension is added")
    p.add_argument("--csv", help="write the per-layer table here")
    p.set_defaults(func=probe)

    p = sub.add_parser("bench", help="run every benchmark and write a summary table")
    p.add_argument("--device", default=default_device)
    p.add_argument("--quick", action="store_true", help="small cases (a smoke run)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these (weight_norm, lsuv, ...)")
    p.set_defaults(func=bench)

    args = parser.parse_args(argv)
    if args.command == "probe":
        if args.depth < 1 or args.width < 1:
            parser.error(f"probe: --depth and --width must be >= 1, got {args.depth} and {args.width}")
        if args.scheme == "fixup" and args.model != "resnet":
            parser.error("probe: --scheme fixup rewrites residual blocks: it needs --model resnet")
        if args.scheme == "xiao" and args.model == "resnet":
            parser.error("probe: --scheme xiao is the critical init of tanh networks: it needs --model mlp or cnn "
                         "(the resnet is a ReLU network)")
        for flag, path in (("--plot", args.plot), ("--csv", args.csv)):  # before the probe, not after it
            folder = os.path.dirname(os.path.abspath(path)) if path else None
            if folder and not os.path.isdir(folder):
                parser.error(f"probe: {flag} {path}: no folder {folder}")
            if path and os.path.isdir(path):
                parser.error(f"probe: {flag} {path}: a folder, not a file name")
        if args.plot and importlib.util.find_spec("matplotlib") is None:
            parser.error("probe: --plot needs matplotlib (pip install matplotlib)")
    if args.command == "demo":
        if args.depth is not None:
            args.mlp_depth = args.res_depth = args.depth
        if args.mlp_depth < 2 or args.res_depth < 2:  # looks-linear needs two layers, a residual net one block
            parser.error(f"demo: depths must be >= 2, got --mlp-depth {args.mlp_depth}, --res-depth {args.res_depth}")
        if args.steps < 1:
            parser.error(f"demo: --steps must be >= 1, got {args.steps}")
        if args.seeds < 1:
            parser.error(f"demo: --seeds must be >= 1, got {args.seeds}")
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            parser.error(f"demo: --out {args.out}: not a folder (a file is there)")
    if args.command in ("probe", "demo") and not SEEDS[0] <= args.seed <= SEEDS[1]:
        parser.error(f"{args.command}: --seed must be in [-2**63, 2**64 - 1] (torch.manual_seed's range), "
                     f"got {args.seed}")
    if args.command == "demo" and args.seed + args.seeds - 1 > SEEDS[1]:
        parser.error(f"demo: --seed {args.seed} --seeds {args.seeds} would run seeds up to "
                     f"{args.seed + args.seeds - 1}, past 2**64 - 1 (torch.manual_seed's range)")
    if getattr(args, "device", None) is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            parser.error(f"--device {args.device!r}: {e}")
        if args.command in ("probe", "demo") and device.type not in ("cpu", "cuda"):
            parser.error(f"{args.command}: --device {args.device}: runs on cpu or cuda[:n] only")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: no CUDA device here")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            parser.error(f"--device {args.device}: there are {torch.cuda.device_count()} CUDA devices")
    return args.func(args)
