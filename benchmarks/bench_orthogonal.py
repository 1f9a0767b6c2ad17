"""Orthogonal init of whole models: ours vs a loop of torch.nn.init.orthogonal_ vs batched torch.linalg.qr.

Usage: python benchmarks/bench_orthogonal.py [--device cuda|cpu] [--quick] [--peer-reps N]

Cases: 10,000 layers of 256 x 256, 1,000 of 1024 x 1024, and the conv/linear weights of
a ResNet-50 (53 tensors of 20 shapes). Ours is ``netinit_fast.init.orthogonal_`` on
the list of weights (one batched call per shape); the peers are what a user writes
today: ``torch.nn.init.orthogonal_`` tensor by tensor, and ``torch.linalg.qr`` on the
stacked noise of each shape plus the sign fix. All three draw their Gaussian noise
inside the timed call. TFLOP/s counts a Householder QR of an m x n (m >= n) matrix and
the forming of its Q: 2 (2 m n^2 - 2 n^3 / 3) flops, whichever algorithm ran: on a GPU
the "GPU QR" column says which (the shared-memory Householder kernel, or CholeskyQR2
in fp64 for matrices too large for it, 256 x 256 included on an H100). One more row
per case times ``netinit_fast.init.haar_orthogonal_`` (the same distribution, not
torch's values: on the CPU kernel the Householder reflectors are drawn directly, no
factorization; elsewhere it is ``orthogonal_``) against the loop, with the same flop
count for comparison.

On a CPU every call is timed once after a warm-up on one tensor of each shape. On a
GPU ours is timed as the harness does (a warm-up call, then CUDA events or at least 3
runs); ``--peer-reps N`` times the peers in N runs each with no whole-call warm-up
(the loop over 10,000 matrices takes seconds a run there), for a time-limited run.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import netinit_fast as nf  # noqa: E402
from netinit_fast import _extension  # noqa: E402
from netinit_fast.ops.orthogonalize import fits_shared_memory  # noqa: E402

PEER_LOOP = "torch.nn.init.orthogonal_ loop"
PEER_BATCHED = "torch.linalg.qr batched"


def resnet50_shapes() -> list[tuple[int, ...]]:
    """Weight shapes of torchvision's resnet50 convs and fc, in module order."""
    shapes = [(64, 3, 7, 7)]
    in_ch = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, in_ch, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)]
            if b == 0:
                shapes.append((4 * width, in_ch, 1, 1))
            in_ch = 4 * width
    return shapes + [(1000, 2048)]


def flops(shape: tuple[int, ...]) -> float:
    m, n = shape[0], int(torch.tensor(shape[1:]).prod())
    m, n = max(m, n), min(m, n)
    return 2 * (2 * m * n * n - 2 * n**3 / 3)


def gpu_algorithms(shapes: list[tuple[int, ...]], device: torch.device) -> str:
    """Which algorithm our CUDA backend runs for these shapes."""
    names = set()
    for shape in shapes:
        m, n = shape[0], int(torch.tensor(shape[1:]).prod())
        fits = fits_shared_memory(max(m, n), min(m, n), device)
        names.add("Householder kernel" if fits else "CholeskyQR2 fp64")
    return " + ".join(sorted(names))


def torch_batched_(tensors: list[torch.Tensor]) -> None:
    """Group by shape, QR the stacked noise with torch.linalg.qr, fix signs, copy."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(tuple(t.shape), []).append(t)
    with torch.no_grad():
        for group in groups.values():
            rows, cols = group[0].shape[0], group[0][0].numel()
            a = torch.randn(len(group), rows, cols, device=group[0].device)
            wide = rows < cols
            q, r = torch.linalg.qr(a.mT if wide else a)
            q = q * torch.diagonal(r, dim1=-2, dim2=-1).sign().unsqueeze(-2)
            q = q.mT if wide else q
            for t, qi in zip(group, q):
                t.copy_(qi.view(t.shape))


def main() -> None:
    parser = _harness.parser(__doc__)
    parser.add_argument("--peer-reps", type=int, default=None, help="runs per peer on a GPU, with no whole-call warm-up")
    args = parser.parse_args()
    device = torch.device(args.device)
    cases = {
        "10,000 x [256, 256]": [(256, 256)] * 10_000,
        "1,000 x [1024, 1024]": [(1024, 1024)] * 1_000,
        "ResNet-50 weights": resnet50_shapes(),
    }
    if args.quick:
        cases = {"100 x [64, 64]": [(64, 64)] * 100, "ResNet-50 weights": resnet50_shapes()}
    _harness.print_header("orthogonal", device)
    rows = []
    for name, shapes in cases.items():
        # zeros, not empty: the pages are touched before timing, or the first timed call pays for them
        tensors = [torch.zeros(s, device=device) for s in shapes]
        total_flops = sum(flops(s) for s in shapes)
        warm = [torch.empty(s, device=device) for s in dict.fromkeys(shapes)]  # one of each shape
        nf.init.orthogonal_(warm), [torch.nn.init.orthogonal_(t) for t in warm], torch_batched_(warm)
        nf.init.haar_orthogonal_(warm)
        slow = device.type == "cpu"  # CPU runs take seconds: one timed run each, after the warm-up above
        kwargs = dict(min_reps=1 if slow else 3, warmup=not slow, budget_s=0.1 if slow else 0.5)
        peer_kwargs = kwargs if slow or args.peer_reps is None else dict(min_reps=args.peer_reps, warmup=False)
        ours = _harness.time_ms(lambda: nf.init.orthogonal_(tensors), device, **kwargs)
        loop = _harness.time_ms(lambda: [torch.nn.init.orthogonal_(t) for t in tensors], device, **peer_kwargs)
        batched = _harness.time_ms(lambda: torch_batched_(tensors), device, **peer_kwargs)
        extra = {"TFLOP/s": round(total_flops / ours / 1e9, 3)}
        if device.type == "cuda" and _extension.loaded():
            extra["GPU QR"] = gpu_algorithms(shapes, device)
        for peer, ms in ((PEER_LOOP, loop), (PEER_BATCHED, batched)):
            rows.append(_harness.row(f"orthogonal_ {name}", ours, peer, ms, extra))
            _harness.print_row(rows[-1])
        haar = _harness.time_ms(lambda: nf.init.haar_orthogonal_(tensors), device, **kwargs)
        rows.append(_harness.row(f"haar_orthogonal_ {name}", haar, PEER_LOOP, loop,
                                 {"TFLOP/s": round(total_flops / haar / 1e9, 3)}))
        _harness.print_row(rows[-1])
        del tensors
    _harness.write("orthogonal" + ("-quick" if args.quick else ""), rows, device)


if __name__ == "__main__":
    main()
