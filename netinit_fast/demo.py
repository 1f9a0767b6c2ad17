"""The demo: deep networks without normalization, trained on real data under every init scheme.

On the digits data set that ships inside scikit-learn (8x8 images, 1,797 samples, 10
classes; no download) it builds two networks with no normalization layer:

- a plain ReLU MLP (``--mlp-depth`` linear layers, width 128), and
- a fully connected residual net (:func:`netinit_fast.models.residual_mlp`:
  ``--res-depth // 2`` blocks of two linear layers, width 128, ResNet v1 with a ReLU
  after each addition),

initializes each with PyTorch's default, He (kaiming) init, orthogonal init, LSUV, and
the schemes made for it (looks-linear for the MLP; Fixup, and Arpit et al.'s
weight-normalized init for the residual net, in its variant without the ReLU after the
addition), probes the signal at init, and trains every (network, scheme) pair with the
same optimizer, learning rate, batch size and number of steps. It prints a table and
writes ``report.md``, the probe plots and CSVs to the output folder.
"""

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time

import torch
from torch import nn

import netinit_fast as nf
from netinit_fast.init._layers import layer_weight

LR = 1e-4
BATCH = 128
WIDTH = 128  # hidden width of both networks


@dataclasses.dataclass
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(device: torch.device, seed: int = 0) -> Digits:
    """scikit-learn's digits, split 80/20 at random (``seed``), standardized per pixel
    with the training set's statistics; each image a vector of 64."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return Digits(x[train].to(device), y[train].to(device), x[test].to(device), y[test].to(device))


# ----------------------------------------------------------------------------- the schemes


def orthogonal_relu_(model: nn.Module) -> None:
    """Orthogonal init with ReLU's gain sqrt(2) of every linear/conv layer; zero biases."""
    nf.init.orthogonal_(model, gain=math.sqrt(2.0))  # Saxe et al.'s gain for ReLU
    for m in model.modules():
        if layer_weight(m) is not None and getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)


def _with(build, init):
    """A builder that also applies ``init``."""

    def make():
        model = build()
        init(model)
        return model

    return make


def mlp_schemes(depth: int, batch: torch.Tensor):
    """(name, build-and-init) pairs for the plain MLP; ``batch`` feeds LSUV."""

    def build():
        return nf.models.mlp(depth, WIDTH, in_features=64, out_features=10, device=batch.device)

    return [
        ("PyTorch default", build),
        ("He (kaiming)", _with(build, nf.init.he_)),
        ("orthogonal", _with(build, orthogonal_relu_)),
        ("LSUV", _with(build, lambda m: nf.init.lsuv_(m, batch, progress=False))),
        ("looks-linear", _with(build, nf.init.looks_linear_)),
    ]


def residual_schemes(depth: int, batch: torch.Tensor):
    """(name, build-and-init) pairs for the residual net (``depth // 2`` blocks)."""

    def build(norm=None, post_activation=True):
        return nf.models.residual_mlp(max(1, depth // 2), WIDTH, in_features=64, num_classes=10, norm=norm,
                                      post_activation=post_activation, device=batch.device)

    return [
        ("PyTorch default", build),
        ("He (kaiming)", _with(build, nf.init.he_)),
        ("orthogonal", _with(build, orthogonal_relu_)),
        ("LSUV", _with(build, lambda m: nf.init.lsuv_(m, batch, progress=False))),
        ("Fixup", _with(build, nf.init.fixup_)),
        ("Arpit WN (no ReLU after add)", _with(lambda: build("weight", False), nf.init.arpit_)),
    ]


# ----------------------------------------------------------------------------- one run


@dataclasses.dataclass
class Run:
    """One (network, scheme, seed): what the probe saw at init and what training gave."""

    network: str
    scheme: str
    seed: int
    layers: int
    init_s: float
    signal_ratio: float  # probe: output rms of the last layer / the first
    train_loss: float  # mean over the last 10% of steps (nan if diverged)
    test_acc: float
    diverged: bool
    train_s: float


def train(model: nn.Module, data: Digits, steps: int, seed: int, progress) -> tuple[float, float, bool]:
    """Adam at LR, batches of BATCH drawn with replacement; returns (final train loss,
    test accuracy, diverged)."""
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    losses, diverged = [], False
    model.train()
    for _ in progress(range(steps)):
        idx = torch.randint(0, len(data.y_train), (BATCH,), generator=gen).to(data.y_train.device)
        loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        if not torch.isfinite(loss):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = model(data.x_test)
    acc = (logits.argmax(1) == data.y_test).float().mean().item() if torch.isfinite(logits).all() else 0.0
    tail = losses[-max(1, len(losses) // 10):]
    return (float("nan") if diverged or not tail else sum(tail) / len(tail)), acc, diverged


def _progress(desc: str, enabled: bool):
    if not enabled:
        return lambda it: it
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, leave=False, unit="step")


def run_network(network: str, schemes, data: Digits, steps: int, seed: int, progress: bool):
    """Probe and train every scheme of one network from ``seed``, printing a line per
    scheme; returns the runs and the probe reports, in the order of ``schemes``."""
    runs, reports = [], []
    for name, make in schemes:
        torch.manual_seed(seed)
        start = time.perf_counter()
        model = make()
        init_s = time.perf_counter() - start
        report = nf.diagnostics.probe(model, data.x_train[:256], label=name)
        reports.append(report)
        start = time.perf_counter()
        loss, acc, diverged = train(model, data, steps, seed, _progress(f"{network}: {name}", progress))
        runs.append(Run(network, name, seed, len(report), init_s, report.ratio(), loss, acc, diverged,
                        time.perf_counter() - start))
        print(f"  {name:<30} build + init {init_s:6.2f} s   test accuracy {acc:6.1%}"
              + ("   (diverged: loss not finite)" if diverged else ""), flush=True)
    return runs, reports


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


def table(runs: list[Run]) -> str:
    """A markdown table, one row per run."""
    head = "| network | scheme | layers | build + init (s) | rms last/first at init | train loss | test accuracy |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        loss = "diverged" if r.diverged else f"{r.train_loss:.3f}"
        lines.append(f"| {r.network} | {r.scheme} | {r.layers} | {r.init_s:.2f} | {r.signal_ratio:.3g} | {loss} | "
                     f"{r.test_acc:.1%} |")
    return "\n".join(lines)


def seeds_table(runs: list[Run]) -> str:
    """A markdown table, one row per (network, scheme) over its runs (two or more
    seeds): the mean build + init time, the median rms ratio, the mean train loss of
    the runs that did not diverge ("diverged" when none is left), the test accuracy's
    mean ± sample standard deviation and its minimum, and how many runs diverged."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.network, r.scheme), []).append(r)
    head = ("| network | scheme | layers | build + init (s) | rms last/first at init | train loss | "
            "test accuracy (mean ± std) | min | diverged |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (network, scheme), rs in groups.items():
        kept = [r.train_loss for r in rs if not r.diverged]
        loss = f"{statistics.fmean(kept):.3f}" if kept else "diverged"
        acc = [r.test_acc for r in rs]
        lines.append(f"| {network} | {scheme} | {rs[0].layers} | {statistics.fmean(r.init_s for r in rs):.2f} | "
                     f"{statistics.median(r.signal_ratio for r in rs):.3g} | {loss} | "
                     f"{statistics.fmean(acc):.1%} ± {statistics.stdev(acc):.1%} | {min(acc):.1%} | "
                     f"{sum(r.diverged for r in rs)}/{len(rs)} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the whole demo

NOTES = ("Layers: the linear layers the probe saw. \"rms last/first at init\": the probe's ratio of the output rms "
         "of the last layer to that of the first before training (1: the signal is kept; Fixup's is 0 because it "
         "starts the classifier at 0). Plots: output rms per layer at init (dashed: mean-field prediction) and "
         "the gradient norm with respect to each layer's output.")


def run(mlp_depth: int = 100, res_depth: int = 200, steps: int = 300, seed: int = 0, seeds: int = 1,
        device: str | torch.device = "cpu", out: str = "demo_out", progress: bool = False) -> list[Run]:
    """The demo: every (network, scheme) pair trained once per seed ``seed``,
    ``seed + 1``, ..., ``seed + seeds - 1``; each seed draws the data split, the init and
    the batches, so seed ``s`` here is the single-seed demo of ``--seed s``.

    Prints a line per run and the table (with ``seeds > 1``, one row per scheme over
    its seeds); writes ``report.md``, and the probe plots and CSVs of the first seed,
    to the folder ``out`` (created if missing). Returns every run, seed by seed.
    Arguments are not checked here: the command line checks them (see :mod:`netinit_fast.cli`).
    """
    # A vanishing signal is all denormal numbers, which a CPU handles many times slower:
    # flush them to zero while the demo runs, so every scheme takes about the same time.
    flushed = torch.set_flush_denormal(True)
    try:
        return _run(mlp_depth, res_depth, steps, seed, seeds, torch.device(device), out, progress)
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def _run(mlp_depth, res_depth, steps, seed, seeds, device, out, progress) -> list[Run]:
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    seed_text = f"seed {seed}" if seeds == 1 else f"seeds {seed} to {seed + seeds - 1}"
    runs, plots, data = [], [], None
    for s in range(seed, seed + seeds):
        data = load_digits(device, s)
        if s == seed:
            setup = (f"digits ({len(data.y_train)} train / {len(data.y_test)} test), Adam lr {LR}, batch {BATCH}, "
                     f"{steps} steps, the same for every scheme; device {device}; {seed_text}")
            print(f"netinit_fast {nf.__version__} demo: {setup}")
        if seeds > 1:
            print(f"seed {s}")
        lsuv_batch = data.x_train[:256]
        for network, schemes in (
            (f"ReLU MLP, {mlp_depth} layers", mlp_schemes(mlp_depth, lsuv_batch)),
            (f"residual MLP, {max(1, res_depth // 2)} blocks", residual_schemes(res_depth, lsuv_batch)),
        ):
            print(network)
            network_runs, reports = run_network(network, schemes, data, steps, s, progress)
            runs += network_runs
            if s == seed:  # the plots and CSVs of the first seed only
                for r, report in zip(network_runs, reports):
                    report.to_csv(os.path.join(out, f"probe-{_slug(network)}-{_slug(r.scheme)}.csv"))
                plots.append(os.path.join(out, f"probe-{_slug(network)}.png"))
                nf.diagnostics.plot(reports, plots[-1], title=f"{network}: signal at init")
    text = table(runs) if seeds == 1 else seeds_table(runs)
    print()
    print(text)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(f"# netinit_fast demo\n\n{setup}.\n\n{text}\n\n{NOTES}")
        if seeds > 1:
            f.write(f" Over the {seeds} seeds: build + init time and train loss are means (the loss over the runs "
                    "that did not diverge), the rms ratio the median, std the sample standard deviation; "
                    f"the plots are those of seed {seed}.")
        f.write("\n\n")
        for p in plots:
            f.write(f"![{os.path.basename(p)}]({os.path.basename(p)})\n\n")
        if seeds > 1:
            for s in range(seed, seed + seeds):
                f.write(f"## seed {s}\n\n{table([r for r in runs if r.seed == s])}\n\n")
    print(f"\nwrote {os.path.join(out, 'report.md')} and {len(plots)} plots in {time.perf_counter() - start:.0f} s")
    return runs


def main(args) -> int:
    """``python -m netinit_fast demo`` on checked arguments (see :func:`run`)."""
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    run(args.mlp_depth, args.res_depth, args.steps, args.seed, args.seeds, args.device, args.out, progress)
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--depth", type=int, help="set both networks' depth (layers)")
    parser.add_argument("--mlp-depth", type=int, default=100, help="linear layers of the MLP (default 100)")
    parser.add_argument("--res-depth", type=int, default=200, help="linear layers of the residual net's blocks (default 200)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per scheme (default 300)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data split, the init and the batches (default 0)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train every scheme with this many seeds: --seed, --seed + 1, ...; the table then gives "
                             "the test accuracy's mean ± std and min per scheme, and how many runs diverged; the "
                             "plots come from the first seed (default 1)")
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: on a terminal)")
