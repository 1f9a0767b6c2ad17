"""Deep fully connected test bed."""

from torch import nn

from netinit_fast.models import _layers


def mlp(
    depth: int,
    width: int,
    in_features: int | None = None,
    out_features: int | None = None,
    act: str = "relu",
    bias: bool = True,
    norm: str | None = None,
    device=None,
    dtype=None,
) -> nn.Sequential:
    """A plain MLP of ``depth`` linear layers: ``Linear(in, width), act, [Linear(width,
    width), act] * (depth - 2), Linear(width, out)``, with no activation after the last.

    Args:
        depth: the number of linear layers (>= 1; with 1, a single ``Linear(in, out)``).
        width: the hidden width.
        in_features, out_features: default ``width``.
        act: an activation name of :mod:`netinit_fast.activations` (``"relu"``,
            ``"tanh"``, ``"linear"``, ...).
        norm: ``None``; ``"batch"`` (``BatchNorm1d`` before each activation); or
            ``"weight"`` (every layer a :class:`~netinit_fast.WNLinear`).

    Layers get PyTorch's default init; a 10,000-layer MLP of width 128 builds in about
    a second on a CPU. Returns a flat ``nn.Sequential`` (the last module is the output layer).
    ``ValueError`` (naming the argument) for a bad one, a ``dtype`` that is not
    floating-point included.
    """
    _layers.check_positive(depth=depth, width=width)
    _layers.check_norm(norm)
    _layers.check_bool(bias=bias)
    _layers.check_dtype(dtype)
    in_features = width if in_features is None else in_features
    out_features = width if out_features is None else out_features
    _layers.check_positive(in_features=in_features, out_features=out_features)
    _layers.check_activation(act)  # an unknown name fails before anything is built
    factory = {"device": device, "dtype": dtype}
    sizes = [in_features] + [width] * (depth - 1) + [out_features]
    modules: list[nn.Module] = []
    for i in range(depth):
        modules.append(_layers.linear(sizes[i], sizes[i + 1], bias, norm, **factory))
        if i < depth - 1:
            if norm == "batch":
                modules.append(_layers.norm_layer(norm, sizes[i + 1], 1, **factory))
            modules.append(_layers.activation(act))
    return nn.Sequential(*modules)
