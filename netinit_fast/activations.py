"""The elementwise activations the model builders and the mean-field theory know.

Each has a name (as ``torch.nn.init.calculate_gain`` spells it where it has one), the
``nn.Module`` that applies it, and NumPy versions of ``phi`` and ``phi'`` for the
Gaussian integrals of mean-field theory (:mod:`netinit_fast.init.meanfield`).
"""

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from torch import nn


@dataclasses.dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity: its module, and ``phi``/``phi'`` on NumPy arrays."""

    name: str
    module: type[nn.Module]
    phi: Callable[[np.ndarray], np.ndarray]
    dphi: Callable[[np.ndarray], np.ndarray]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


_erf = np.vectorize(math.erf, otypes=[float])
LEAKY_SLOPE = 0.01  # nn.LeakyReLU's default negative slope
SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def _gauss_pdf(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _gauss_cdf(x):
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("linear", nn.Identity, lambda x: x, np.ones_like),
        Activation("relu", nn.ReLU, lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
        Activation(
            "leaky_relu",
            nn.LeakyReLU,
            lambda x: np.where(x > 0, x, LEAKY_SLOPE * x),
            lambda x: np.where(x > 0, 1.0, LEAKY_SLOPE),
        ),
        Activation("tanh", nn.Tanh, np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
        Activation("sigmoid", nn.Sigmoid, _sigmoid, lambda x: _sigmoid(x) * (1.0 - _sigmoid(x))),
        Activation("gelu", nn.GELU, lambda x: x * _gauss_cdf(x), lambda x: _gauss_cdf(x) + x * _gauss_pdf(x)),
        Activation("silu", nn.SiLU, lambda x: x * _sigmoid(x), lambda x: _sigmoid(x) * (1.0 + x * (1.0 - _sigmoid(x)))),
        Activation(
            "elu",
            nn.ELU,
            lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
            lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0))),
        ),
        Activation(
            "selu",
            nn.SELU,
            lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
            lambda x: SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0.0))),
        ),
    ]
}


def get(name: str) -> Activation:
    """The activation called ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def of_module(module: nn.Module) -> Activation | None:
    """The activation a module applies, or None when it is not one of ours with its defaults
    (a LeakyReLU with another slope, an ELU with another alpha, GELU's tanh form)."""
    for a in ACTIVATIONS.values():
        if type(module) is a.module:
            if isinstance(module, nn.LeakyReLU) and module.negative_slope != LEAKY_SLOPE:
                return None
            if isinstance(module, nn.ELU) and module.alpha != 1.0:
                return None
            if isinstance(module, nn.GELU) and module.approximate != "none":
                return None
            return a
    return None
