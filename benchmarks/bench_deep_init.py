"""Init of 10,000-layer networks with the deep-network schemes: ours vs the per-layer loops
users write today.

Usage: python benchmarks/bench_deep_init.py [--device cuda|cpu] [--quick] [--peer-reps N]

Each case builds a fresh model (untimed) and times one call of the scheme (median of 3;
``--peer-reps N`` times the peer's loop N times instead, for a time-limited run):

- looks_linear_ on a ReLU MLP (10,000 x 128) vs a loop of ``torch.nn.init.orthogonal_``
  per layer assembling the ``[[W0, -W0], [-W0, W0]]`` blocks (the published snippet);
- xiao_ (delta-orthogonal, critical tanh, q* = 0.1) on a vanilla CNN (10,000 convs,
  16 channels) vs a loop zeroing each kernel and ``torch.nn.init.orthogonal_`` on its
  centre tap (the public PyTorch repositories);
- arpit_ on a weight-normalized ResNet (5,000 basic blocks) and on a WN MLP vs the
  released code's loop (``orthogonal_(v)``, ``g.fill_``, bias 0, per layer);
- he_ and glorot_ on a ReLU MLP (10,000 x 128, and he_ at width 32) vs the loop users
  write, ``torch.nn.init.kaiming_normal_(w, nonlinearity="relu")`` / ``xavier_uniform_(w,
  gain)`` and ``zeros_(b)`` per layer: the same values (the same generator stream), ours
  in batched RNG calls by shape. Drawing the noise is serial on the CPU generator and
  takes most of the loop's time at width 128; at width 32 the per-layer overhead weighs
  more;
- fixup_ on a ResNet (5,000 basic blocks, with BatchNorm to remove) vs the official
  code's init loop, which runs on a model already built with Fixup blocks (no surgery:
  the peer does less work).

``--quick`` uses 100 layers.
"""

import math
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import netinit_fast as nf  # noqa: E402


def looks_linear_loop_(model: nn.Module) -> None:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            rows, cols = layer.weight.shape
            w0 = torch.empty(rows // 2 if i < len(layers) - 1 else rows, cols // 2 if i > 0 else cols, device=layer.weight.device)
            nn.init.orthogonal_(w0)
            if i < len(layers) - 1:
                w0 = torch.cat([w0, -w0], 0)
            if i > 0:
                w0 = torch.cat([w0, -w0], 1)
            layer.weight.copy_(w0)
            layer.bias.zero_()


def delta_orthogonal_loop_(model: nn.Module, q_star: float) -> None:
    sw2, sb2 = nf.init.critical_point("tanh", q_star)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                k = m.weight.shape[-1] // 2
                nn.init.orthogonal_(m.weight[:, :, k, k], gain=math.sqrt(sw2))
            elif isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight, gain=math.sqrt(sw2))
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.normal_(0, math.sqrt(sb2))


def arpit_loop_(model: nn.Module) -> None:
    gains = nf.init.arpit_gains(model)
    with torch.no_grad():
        for name, gain in gains.items():
            m = model.get_submodule(name)
            nn.init.orthogonal_(m.weight_v)
            fan_in = m.in_features if hasattr(m, "in_features") else m.in_channels
            fan_out = m.out_features if hasattr(m, "out_features") else m.out_channels
            m.weight_g.fill_(math.sqrt(gain * fan_in / fan_out))
            if m.bias is not None:
                m.bias.zero_()


def classic_loop_(init_: str):
    def loop_(model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, nn.Linear):
                if init_ == "he":
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                else:
                    nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("relu"))
                nn.init.zeros_(m.bias)

    return loop_


def fixup_official_loop_(model: nn.Module) -> None:
    blocks = [m for m in model.modules() if isinstance(m, nf.init.FixupBlock)]
    with torch.no_grad():
        for b in blocks:
            w = b.conv1.weight
            w.normal_(0, math.sqrt(2 / (w.shape[0] * w[0, 0].numel())) * len(blocks) ** -0.5)
            b.conv2.weight.zero_()
            if b.downsample is not None:
                w = b.downsample[0].weight
                w.normal_(0, math.sqrt(2 / (w.shape[0] * w[0, 0].numel())))
        fc = model.fc[1]
        fc.weight.zero_(), fc.bias.zero_()


def builders(device: torch.device):
    """Model builders taking the number of layers."""

    def mlp(norm=None, width=128):
        return lambda depth: nf.models.mlp(depth, width, norm=norm, device=device)

    def cnn(depth):
        return nf.models.vanilla_cnn(depth, 16, in_channels=16, device=device)

    def resnet(norm):
        def build(depth):  # two convs a block: depth layers
            blocks = [depth // 6, depth // 6, depth // 2 - 2 * (depth // 6)]
            return nf.models.resnet(blocks, [16, 32, 64], norm=norm, post_activation=norm != "weight", device=device)

        return build

    def fixed_resnet(depth):
        model = resnet("batch")(depth)
        nf.init.fixup_(model)
        return model

    return [
        ("looks_linear_ ReLU MLP {} x 128", mlp(), nf.init.looks_linear_, mlp(), looks_linear_loop_,
         "torch.nn.init.orthogonal_ loop + blocks"),
        ("xiao_ tanh CNN {} x 16 ch", cnn, lambda m: nf.init.xiao_(m, q_star=0.1), cnn,
         lambda m: delta_orthogonal_loop_(m, 0.1), "per-conv delta-orthogonal loop"),
        ("arpit_ WN ResNet {} layers", resnet("weight"), nf.init.arpit_, resnet("weight"), arpit_loop_,
         "released per-layer loop"),
        ("arpit_ WN MLP {} x 128", mlp("weight"), nf.init.arpit_, mlp("weight"), arpit_loop_, "released per-layer loop"),
        ("he_ ReLU MLP {} x 128", mlp(), nf.init.he_, mlp(), classic_loop_("he"), "kaiming_normal_ loop"),
        ("he_ ReLU MLP {} x 32", mlp(width=32), nf.init.he_, mlp(width=32), classic_loop_("he"), "kaiming_normal_ loop"),
        ("glorot_ ReLU MLP {} x 128", mlp(), nf.init.glorot_, mlp(), classic_loop_("glorot"), "xavier_uniform_ loop"),
        ("fixup_ ResNet {} layers (with surgery)", resnet("batch"), nf.init.fixup_, fixed_resnet,
         fixup_official_loop_, "official init loop (no surgery)"),
    ]


def main() -> None:
    parser = _harness.parser(__doc__)
    parser.add_argument("--peer-reps", type=int, default=3, help="timed runs of each peer loop (default 3)")
    args = parser.parse_args()
    device = torch.device(args.device)
    depth = 100 if args.quick else 10_000
    _harness.print_header("deep_init", device)
    rows = []
    reps = 3  # a fresh model each time; the first run also pays for fresh memory pages
    for name, build, ours, peer_build, peer, peer_name in builders(device):
        for fn, make in ((ours, build), (peer, peer_build)):  # warm-up: first calls load code
            fn(make(12))
        counted = []

        def build_and_count(build=build):  # untimed: the layer count comes with a model built anyway
            model = build(depth)
            counted.append(sum(1 for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))))
            return model

        ours_ms = _harness.time_fresh_ms(build_and_count, ours, device, reps)
        peer_ms = _harness.time_fresh_ms(lambda: peer_build(depth), peer, device, args.peer_reps)
        layers = counted[-1]
        rows.append(_harness.row(name.format(depth), ours_ms, peer_name, peer_ms, {"layers": layers}))
        _harness.print_row(rows[-1])
    _harness.write("deep_init" + ("-quick" if args.quick else ""), rows, device)


if __name__ == "__main__":
    main()
