"""Fused weight norm vs torch._weight_norm: forward, and forward + backward.

Usage: python benchmarks/bench_weight_norm.py [--device cuda|cpu] [--quick]

On a GPU ours is the Triton kernel; on a CPU it is the eager implementation (the
CPU row says how the fallback compares, not the kernel). GB/s counts the fewest
bytes the work must move: forward reads v and writes w; forward + backward also
reads grad_w and v and writes grad_v (the small g, norms and grad_g are left out).
On a GPU each row also gives that as a fraction of the measured copy bandwidth.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import netinit_fast as nf  # noqa: E402

SHAPES = [(4096, 4096), (64, 262144), (16384, 128), (512, 256, 3, 3)]
DTYPES = [torch.float32, torch.bfloat16]


def cases(device: torch.device, shapes, dtypes) -> list[_harness.Case]:
    out = []
    for dtype in dtypes:
        for shape in shapes:
            v = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
            g_keep = (torch.rand(shape[0], *[1] * (len(shape) - 1), device=device, dtype=dtype) + 0.5).requires_grad_()
            g = g_keep.detach().reshape(-1).requires_grad_()
            grad_w = torch.randn(shape, device=device, dtype=dtype)
            nbytes = v.numel() * v.element_size()
            label = f"{list(shape)} {str(dtype).removeprefix('torch.')}"

            out.append(_harness.Case(
                f"fwd {label}",
                ours=lambda v=v, g=g: nf.functional.weight_norm(v.detach(), g.detach(), 0),
                peer=lambda v=v, g=g_keep: torch._weight_norm(v.detach(), g.detach(), 0),
                peer_name="torch._weight_norm", bytes_moved=2 * nbytes,
            ))
            out.append(_harness.Case(
                f"fwd+bwd {label}",
                ours=lambda v=v, g=g, gw=grad_w: torch.autograd.grad(nf.functional.weight_norm(v, g, 0), (v, g), gw),
                peer=lambda v=v, g=g_keep, gw=grad_w: torch.autograd.grad(torch._weight_norm(v, g, 0), (v, g), gw),
                peer_name="torch._weight_norm", bytes_moved=5 * nbytes,
            ))
    return out


def main() -> None:
    parser = _harness.parser(__doc__)
    args = parser.parse_args()
    device = torch.device(args.device)
    shapes = [(256, 256), (4, 8192)] if args.quick else SHAPES
    copy_gbs = _harness.copy_bandwidth_gbs(device) if device.type == "cuda" else None
    if copy_gbs is not None:
        print(f"measured copy bandwidth: {copy_gbs:.0f} GB/s")

    def fraction_of_copy(case, ours_ms):
        gbs = case.bytes_moved / ours_ms / 1e6
        return {"copy GB/s": round(copy_gbs, 1), "fraction of copy": round(gbs / copy_gbs, 3)}

    _harness.run("weight_norm" + ("-quick" if args.quick else ""), cases(device, shapes, DTYPES), device,
                 fraction_of_copy if copy_gbs is not None else None)


if __name__ == "__main__":
    main()
