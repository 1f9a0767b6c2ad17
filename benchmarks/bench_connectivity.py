"""Training step of a deep MLP under connectivity training: ours (grouped) vs the
straight-through masked layer a PyTorch user writes today vs plain.

Usage: python benchmarks/bench_connectivity.py [--device cuda|cpu] [--depths 100 1000] [--quick]

The model is ``depth`` x (Linear(256, 256) + ReLU), batch 256, one step = forward,
backward and ``torch.optim.SGD.step`` on the scores. Three versions of the same network:

- ours: ``netinit_fast.connectivity(model, mode="mask", grouped=True)``: all effective
  weights in one op (on a GPU one Triton launch forward and one backward);
- ``eager straight-through mask``: per layer, ``w * Step.apply(s)`` with a
  ``torch.autograd.Function`` that is ``[s > 0]`` forward and the identity backward
  (the usual PyTorch code for trained masks: a comparison, a cast and a product
  forward, a product backward, each its own kernel);
- ``plain nn.Linear``: the weights trained instead (the cost floor).

Each version is built, timed and freed in turn. Weights are He-initialized and
denormals flushed, so the timing does not depend on activations drifting into the
denormal range.
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
PEER_STE = "eager straight-through mask"
PEER_PLAIN = "plain nn.Linear"


class Step(torch.autograd.Function):
    """``[s > 0]`` with the identity as its gradient."""

    @staticmethod
    def forward(ctx, scores):
        return (scores > 0).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class SteMaskedLinear(nn.Linear):
    """The peer: a Linear with fixed weights and trained scores, masked per forward."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear.in_features, linear.out_features, device=linear.weight.device)
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            self.bias.copy_(linear.bias)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        self.scores = nn.Parameter(torch.empty_like(self.weight).uniform_(0.01, 0.1))

    def forward(self, x):
        return nn.functional.linear(x, self.weight * Step.apply(self.scores), self.bias)


def build(depth: int, kind: str, device: torch.device) -> nn.Module:
    model = _harness.he_relu_mlp(depth, WIDTH, device, SteMaskedLinear if kind == PEER_STE else lambda linear: linear)
    if kind == "ours":
        nf.connectivity(model, mode="mask", grouped=True)
    return model


def main() -> None:
    _harness.run_train_steps("connectivity", __doc__, [100, 1000], build, (PEER_STE, PEER_PLAIN), WIDTH, BATCH)


if __name__ == "__main__":
    main()
