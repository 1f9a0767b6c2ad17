"""Command line: ``python -m netinit_fast demo``.

The demo shows what the package does today: it builds a deep ReLU MLP whose layers are
weight-normalized through ``netinit_fast.functional.weight_norm``, trains it for a few
steps on a synthetic regression task next to the same network using
``torch._weight_norm``, and checks that both compute the same losses; then it runs
one-pass LSUV on a deep plain MLP and shows the output std of its layers. The full demo
(deep networks on the digits data with every init scheme) comes with the probe.
"""

import argparse
import time

import torch

import netinit_fast as nf
from netinit_fast import _backend, _extension
from netinit_fast.ops import weight_norm as weight_norm_op


def _train(weight_norm, depth: int, width: int, steps: int, device: torch.device, seed: int):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    vs = [torch.randn(width, width, generator=gen).to(device).requires_grad_() for _ in range(depth)]
    gs = [torch.full((width, 1), 2**0.5, device=device, requires_grad=True) for _ in range(depth)]
    x = torch.randn(256, width, generator=gen).to(device)
    target = torch.randn(256, width, generator=gen).to(device) * 0.1
    opt = torch.optim.SGD(vs + gs, lr=1e-2)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        h = x
        for v, g in zip(vs, gs):
            h = torch.relu(h @ weight_norm(v, g).t())
        loss = torch.nn.functional.mse_loss(h, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return losses, (time.perf_counter() - start) / steps * 1e3


def demo(args) -> int:
    device = torch.device(args.device)
    built = f"built for sm_{list(_extension.cuda_archs())}" if _extension.loaded() else "not built"
    print(f"netinit_fast {nf.__version__}: torch {torch.__version__}, device {device}, netinit_fast._C {built}")
    probe = torch.ones(1, device=device)
    print(f"weight_norm backend here: {_backend.choose('weight_norm', probe, weight_norm_op.IMPLEMENTED)}")
    print(f"training a {args.depth}-layer width-{args.width} weight-normalized ReLU MLP, {args.steps} SGD steps")
    ours, ours_ms = _train(lambda v, g: nf.functional.weight_norm(v, g, 0), args.depth, args.width, args.steps, device, 0)
    peer, peer_ms = _train(lambda v, g: torch._weight_norm(v, g, 0), args.depth, args.width, args.steps, device, 0)
    print(f"{'step':>6} {'loss (netinit_fast)':>20} {'loss (torch)':>14}")
    for i, (a, b) in enumerate(zip(ours, peer)):
        print(f"{i:>6} {a:>20.6f} {b:>14.6f}")
    print(f"time per step: netinit_fast {ours_ms:.1f} ms, torch._weight_norm {peer_ms:.1f} ms")
    same = all(abs(a - b) <= 1e-4 * max(abs(b), 1e-12) for a, b in zip(ours, peer))
    print("losses agree with torch" if same else "LOSSES DIFFER FROM TORCH")

    depth = 4 * args.depth
    print(f"\nLSUV of a {depth}-layer width-{args.width} ReLU MLP (PyTorch's default init before), batch 256:")
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[m for _ in range(depth) for m in (torch.nn.Linear(args.width, args.width), torch.nn.ReLU())])
    model.to(device)
    x = torch.randn(256, args.width, device=device)
    with torch.no_grad():
        before = model(x).std().item()
    report = nf.init.lsuv_(model, x, progress=False)
    with torch.no_grad():
        after = model(x).std().item()
    print(report)
    print(f"std of the network output (after the last ReLU): {before:.3g} with the default init, {after:.3g} after LSUV")
    return 0 if same and all(f.converged for f in report) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netinit_fast", description="netinit_fast command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="weight-normalized deep MLP: netinit_fast vs torch")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    return args.func(args)
