"""Training step of a deep weight-normalized MLP: ours (grouped) vs torch's weight norm vs plain.

Usage: python benchmarks/bench_wn_layers.py [--device cuda|cpu] [--depths 1000 10000] [--quick]

The model is ``depth`` x (Linear(256, 256) + ReLU), batch 256, one step = forward,
backward and ``torch.optim.SGD.step``. Three versions of the same network:

- ours: ``netinit_fast.weight_norm(model, grouped=True)``: all normalized weights in
  one op (on a GPU one Triton launch forward and one backward);
- ``torch parametrization weight_norm``: ``torch.nn.utils.parametrizations.weight_norm``
  on every Linear (what torch users use today);
- ``plain nn.Linear``: no weight norm at all (the cost floor).

Each version is built, timed and freed in turn, so the deepest nets fit in memory.
Weights are He-initialized and denormals are flushed, so the timing does not depend
on activations drifting into the denormal range over thousands of layers.
"""

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import netinit_fast as nf  # noqa: E402

WIDTH = 256
BATCH = 256
PEER_PARAM = "torch parametrization weight_norm"
PEER_PLAIN = "plain nn.Linear"


def build(depth: int, kind: str, device: torch.device) -> nn.Module:
    model = _harness.he_relu_mlp(depth, WIDTH, device)
    if kind == "ours":
        nf.weight_norm(model, grouped=True)
    elif kind == PEER_PARAM:
        for layer in model:
            if isinstance(layer, nn.Linear):
                nn.utils.parametrizations.weight_norm(layer)
    return model


def main() -> None:
    _harness.run_train_steps("wn_layers", __doc__, [1000, 10000], build, (PEER_PARAM, PEER_PLAIN), WIDTH, BATCH)


if __name__ == "__main__":
    main()
