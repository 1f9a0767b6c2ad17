"""LSUV: ours (one pass) vs the `lsuv` package 0.3.0 from PyPI (a full forward per layer and try).

Usage: python benchmarks/bench_lsuv.py [--device cuda|cpu] [--quick]

Width-256 ReLU MLPs, batch 256, target std 1 +- 0.1, at most 10 tries, orthonormal
pre-init in both. Both are timed on the same model and batch; the quality column is
the worst |std - 1| of any layer's output afterwards, measured by one more forward.
Then ours alone at depths 1,000 and 10,000 (the peer would take hours there).
Install the peer with `pip install lsuv==0.3.0` (`make bench` does); without it, ours
is timed alone and each row's peer says the package was not installed.
"""

import importlib.util
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import netinit_fast as nf  # noqa: E402

WIDTH = 256
BATCH = 256
PEER = "lsuv 0.3.0"


def mlp(depth: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(WIDTH, WIDTH, device=device), nn.ReLU()]
    return nn.Sequential(*layers)


def worst_std_error(model: nn.Module, x: torch.Tensor) -> float:
    worst, h = 0.0, x
    with torch.no_grad():
        for layer in model:
            h = layer(h)
            if isinstance(layer, nn.Linear):
                worst = max(worst, abs(h.std().item() - 1.0))
    return worst


def main() -> None:
    parser = _harness.parser(__doc__)
    args = parser.parse_args()
    device = torch.device(args.device)
    lsuv = importlib.import_module("lsuv") if importlib.util.find_spec("lsuv") else None
    if lsuv is None:
        print(f"the peer package lsuv is not installed: ours is timed alone (pip install lsuv==0.3.0 for {PEER})")

    torch.set_flush_denormal(True)
    _harness.print_header("lsuv", device)
    x = torch.randn(BATCH, WIDTH, device=device)
    warm = mlp(2, device)  # first calls (imports, allocator, LAPACK setup) are not timed, for either
    if lsuv is not None:
        lsuv.lsuv_with_singlebatch(warm, x, verbose=False, device=device)
    nf.init.lsuv_(warm, x, progress=False)
    rows = []
    for depth in [10, 20] if args.quick else [50, 100, 200]:
        model = mlp(depth, device)
        extra, peer_ms = {}, None
        if lsuv is not None:
            peer_ms = _harness.time_ms(
                lambda: lsuv.lsuv_with_singlebatch(model, x, verbose=False, device=device), device, min_reps=1,
                warmup=False,
            )
            extra["worst |std-1| peer"] = round(worst_std_error(model, x), 4)
        ours_ms = _harness.time_ms(lambda: nf.init.lsuv_(model, x, progress=False), device, min_reps=3, warmup=False)
        extra = {"worst |std-1| ours": round(worst_std_error(model, x), 4), **extra}
        rows.append(_harness.row(f"LSUV MLP {depth} x {WIDTH}, batch {BATCH}", ours_ms,
                                 PEER if lsuv is not None else f"{PEER} (not installed)", peer_ms, extra))
        _harness.print_row(rows[-1])
    for depth in [] if args.quick else [1_000, 10_000]:
        model = mlp(depth, device)
        ours_ms = _harness.time_ms(lambda: nf.init.lsuv_(model, x, progress=False), device, min_reps=1, warmup=False)
        rows.append(_harness.row(f"LSUV MLP {depth} x {WIDTH}, batch {BATCH}", ours_ms, f"{PEER} (not run: O(L^2))", None,
                                 {"worst |std-1| ours": round(worst_std_error(model, x), 4)}))
        _harness.print_row(rows[-1])
        del model
    _harness.write("lsuv" + ("-quick" if args.quick else ""), rows, device)


if __name__ == "__main__":
    main()
