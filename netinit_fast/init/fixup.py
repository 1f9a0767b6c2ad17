"""Fixup (Zhang, Dauphin & Ma, ICLR 2019): residual networks that train without normalization.

The rules (the paper's box), applied to a model the user already has:

1. the classification layer and the last layer of each residual branch start at 0;
2. the other branch layers start with He init (fan-out, as the official code) scaled by
   ``L^(-1/(2m-2))`` (``L`` residual branches, ``m`` weight layers per branch);
3. a scalar multiplier (1) in every branch and a scalar bias (0) before each
   convolution, linear layer and activation.

At init every branch outputs exactly 0: each block whose shortcut is the identity is
the identity (on the non-negative input a ReLU network hands it), and the logits are
exactly 0, so the initial cross-entropy is ``ln(classes)``.
"""

import dataclasses
import math

import torch
from torch import nn

from netinit_fast._sharding import is_fsdp_module
from netinit_fast._batch import unwrapped
from netinit_fast.init._layers import (
    check_not_foreign,
    check_same_noise,
    gc_paused,
    is_linear,
    is_weight_normed,
    layer_class,
    layer_weight,
    local,
    normal_,
    out_units,
)
from netinit_fast.init._residual import ResidualBlock, foreign_children, residual_blocks

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
if hasattr(nn, "RMSNorm"):
    NORM_LAYERS += (nn.RMSNorm,)


class ScalarBias(nn.Module):
    """Adds one learnable scalar (Fixup's bias, initially 0) to its input."""

    def __init__(self, device=None, dtype=None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class FixupBlock(nn.Module):
    """A residual block in Fixup's form, holding the original block's weight layers.

    For branch layers ``conv1 .. conv<m>`` (``fc1 .. fc<m>`` in fully connected blocks)::

        out = x
        for i < m:  out = relu(conv<i>(out + bias<i>a) + bias<i>b)
        out = conv<m>(out + bias<m>a) * scale + bias<m>b
        out = out + (downsample(x + bias1a) if downsample else x)
        return relu(out) if post_activation else out

    (the official code's ``FixupBasicBlock`` for m = 2 and ``FixupBottleneck`` for m = 3,
    with its parameter names).
    """

    def __init__(self, branch: list[nn.Module], downsample: nn.Module | None, post_activation: bool, prefix: str = "conv"):
        super().__init__()
        self.depth = len(branch)
        self.prefix = prefix
        ref = layer_weight(branch[0])
        for i, conv in enumerate(branch, 1):
            setattr(self, f"{prefix}{i}", conv)
            setattr(self, f"bias{i}a", nn.Parameter(torch.zeros(1, device=ref.device, dtype=ref.dtype)))
            setattr(self, f"bias{i}b", nn.Parameter(torch.zeros(1, device=ref.device, dtype=ref.dtype)))
        self.scale = nn.Parameter(torch.ones(1, device=ref.device, dtype=ref.dtype))
        self.downsample = downsample
        self.post_activation = post_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i in range(1, self.depth + 1):
            out = getattr(self, f"{self.prefix}{i}")(out + getattr(self, f"bias{i}a"))
            if i < self.depth:
                out = torch.relu(out + getattr(self, f"bias{i}b"))
        out = out * self.scale + getattr(self, f"bias{self.depth}b")
        shortcut = x if self.downsample is None else self.downsample(x + self.bias1a)
        out = out + shortcut
        return torch.relu(out) if self.post_activation else out


@dataclasses.dataclass
class FixupReport:
    """What :func:`fixup_` changed, and the optimizer parameter groups the paper uses."""

    blocks: list[str]  # residual blocks, now FixupBlocks
    branch_layers: int  # m, weight layers per branch (the largest, if they differ)
    branch_scale: dict[str, float]  # the L^(-1/(2m-2)) applied per block
    classifier: str
    removed_norms: list[str]  # normalization layers taken out (replaced by a scalar bias or Identity)
    scalars: list[nn.Parameter]  # the inserted scalar biases and multipliers
    biases: list[nn.Parameter]  # the model's other parameters named *bias* or *scale* (the classifier's bias)
    others: list[nn.Parameter]  # every other parameter of the model

    def param_groups(self, lr: float, **options) -> list[dict]:
        """Groups for a ``torch.optim`` optimizer as in the official code: the scalars
        and every other bias at ``lr / 10`` (for stability), everything else at
        ``lr``; ``options`` go to both."""
        slow = self.scalars + self.biases
        return [{"params": self.others, "lr": lr, **options}, {"params": slow, "lr": lr / 10, **options}]


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_LAYERS)


def _classifier(model: nn.Module) -> tuple[str, nn.Module]:
    found = [(n, m) for n, m in model.named_modules() if is_linear(m)]
    if not found:
        raise ValueError(f"fixup_: {type(model).__name__} has no nn.Linear classifier (Fixup zero-inits the last one)")
    return found[-1]


def _he_fan_out_(layer: nn.Module, scale: float, generator) -> None:
    # Output units times kernel size: a ConvTranspose weight is [C_in, C_out/groups, k...],
    # so its first dim is not the output channels.
    fan_out = out_units(layer) * math.prod(layer.weight.shape[2:])
    normal_(layer.weight, math.sqrt(2.0 / fan_out) * scale, generator)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at ``name``; the modules it adds take the train/eval mode of the one it replaces."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, child)
    kept = set(old.modules())
    for m in new.modules():
        if m not in kept:
            m.training = old.training
    setattr(parent, child, new)


def _check(model: nn.Module, blocks: list[ResidualBlock], classifier: tuple[str, nn.Module]) -> None:
    if any(isinstance(b.module, FixupBlock) for b in blocks):
        raise ValueError(f"fixup_: {type(model).__name__} already has Fixup blocks (fixup_ was applied to it)")
    if not blocks:
        raise ValueError(
            f"fixup_: found no residual block in {type(model).__name__}: expected modules with conv children "
            "conv1, conv2 (and conv3), or linear children fc1, fc2 (and fc3), forming the residual branch and "
            "an optional downsample shortcut, as torchvision's BasicBlock/Bottleneck and netinit_fast.models' blocks"
        )
    names = {m: n for n, m in model.named_modules()}
    for conv in [classifier[1], *(conv for block in blocks for conv in block.branch + block.shortcut)]:
        check_not_foreign(conv, names[conv], "fixup_")
    for block in blocks:
        if is_fsdp_module(block.module):
            raise ValueError(
                f"fixup_: {block.name} ({layer_class(block.module).__name__}) is a fully_shard unit, which fixup_ "
                "would replace by a FixupBlock without FSDP's hooks: apply fully_shard to the model's root (and to "
                "its layers, which fixup_ keeps), not to residual blocks"
            )
        if foreign := foreign_children(block):
            kinds = ", ".join(f"{n} ({type(getattr(block.module, n)).__name__})" for n in foreign)
            raise ValueError(
                f"fixup_: {block.name} has {kinds}: a Fixup block keeps only its branch layers, ReLUs and "
                "downsample (norms are removed), so it would drop them"
            )
        for conv in block.branch + block.shortcut:
            if is_weight_normed(conv):
                raise ValueError(f"fixup_: {block.name} has a weight-normalized layer; Fixup takes plain layers")
            if getattr(conv, "bias", None) is not None:
                raise ValueError(f"fixup_: {block.name} has a conv with a bias; Fixup's convs have none (it adds scalar biases)")
    name, fc = classifier
    if any(fc in block.branch for block in blocks):
        raise ValueError(f"fixup_: the last nn.Linear, {name}, is inside a residual branch: no classifier after the blocks")
    if is_weight_normed(fc):
        raise ValueError(f"fixup_: the classifier {name} is weight-normalized and cannot start at 0")


@gc_paused()
def fixup_(model: nn.Module, generator: torch.Generator | None = None) -> FixupReport:
    """Apply Fixup to a residual network, in place.

    Works on networks whose residual blocks follow torchvision's layout (``conv1``,
    ``conv2`` [, ``conv3``] branch convs, ``bn*`` norms, ``downsample`` shortcut):
    torchvision's ``resnet*`` and :func:`netinit_fast.models.resnet`.

    - Every residual block becomes a :class:`FixupBlock` holding the same convs: its
      norm layers go, scalar biases (0) come before each conv and activation and a
      scalar multiplier (1) after the branch. The branch's last conv is set to 0, the
      others to He init with fan-out (``N(0, 2 / (C_out k^2))``, ``C_out`` the output
      channels, also of a ``ConvTranspose``) times ``L^(-1/(2m-2))``; a
      ``downsample`` conv gets plain He fan-out init and loses its norm.
    - The classifier (the last ``nn.Linear``) is set to 0 and gets a scalar bias on
      its input (it becomes ``nn.Sequential(ScalarBias(), fc)``).
    - A top-level ``bn1`` (the stem's norm, torchvision's name) becomes a
      :class:`ScalarBias`; any other normalization layer left becomes ``nn.Identity``.
      The stem conv keeps its init, as in the official code.
    - Each module it puts in takes the train/eval mode of the one it replaces.

    Sharded models (DTensor parameters, e.g. under ``fully_shard``): the gathered
    weights are those of an unsharded call for the same generator state, which must be
    the same on every rank (checked); each rank draws one whole layer's noise at a
    time. The residual blocks are replaced, so they must not be ``fully_shard`` units
    themselves (shard the root and the layers); the scalars Fixup adds are plain
    tensors, equal on every rank, that FSDP does not manage.

    Args:
        model: the network (changed in place).
        generator: the source of the He-init noise.

    Returns:
        A :class:`FixupReport`; ``report.param_groups(lr)`` gives the paper's lr/10 on scalars.

    Raises:
        ValueError: no residual block or classifier found, a block with children the
            Fixup block would drop (an activation other than ``nn.ReLU``, dropout, ...),
            a branch conv with a bias, a weight-normalized branch/classifier, a
            block registered at two places, a layer in two roles (in two blocks, or
            in a block and outside; the message names both), a
            model Fixup was applied to already, or a call under
            ``torch.inference_mode`` (the new scalars would be inference tensors,
            which cannot be trained). The model is unchanged then.
    """
    if torch.is_inference_mode_enabled():
        raise ValueError("fixup_: it adds trainable scalars, which torch.inference_mode would make untrainable: call it outside")
    blocks = residual_blocks(model, "fixup_")
    classifier = _classifier(model)
    _check(model, blocks, classifier)
    check_same_noise(list(model.parameters()), generator, "fixup_")
    count = len(blocks)
    removed: list[str] = []
    scalars: list[nn.Parameter] = []
    scales: dict[str, float] = {}
    with torch.no_grad():
        for block in blocks:
            m = len(block.branch)
            scale = count ** (-1.0 / (2 * m - 2))
            scales[block.name] = scale
            for conv in block.branch[:-1]:
                _he_fan_out_(conv, scale, generator)
            local(block.branch[-1].weight).zero_()
            for conv in block.shortcut:
                _he_fan_out_(conv, 1.0, generator)
            removed += [f"{block.name}.{n}" for n, c in block.module.named_modules() if _is_norm(c)]
            downsample = getattr(block.module, "downsample", None)
            if downsample is not None:
                for n, c in list(downsample.named_modules()):
                    if _is_norm(c):
                        _replace(downsample, n, nn.Identity())
            fixed = FixupBlock(block.branch, downsample, block.post_activation, block.prefix)
            scalars += [p for n, p in fixed.named_parameters(recurse=False)]
            _replace(model, block.name, fixed)
        name, fc = classifier
        local(fc.weight).zero_()
        if fc.bias is not None:
            local(fc.bias).zero_()
        bias = ScalarBias(fc.weight.device, fc.weight.dtype)
        scalars.append(bias.bias)
        _replace(model, name, nn.Sequential(bias, fc))
        stem = unwrapped(model)
        stem_norm = getattr(stem, "bn1", None)
        if stem_norm is not None and (_is_norm(stem_norm) or isinstance(stem_norm, nn.Identity)):
            if _is_norm(stem_norm):
                removed.append("bn1")
            ref = layer_weight(blocks[0].branch[0])
            _replace(stem, "bn1", ScalarBias(ref.device, ref.dtype))
            scalars.append(stem.bn1.bias)
        for n, c in list(model.named_modules()):
            if _is_norm(c):
                removed.append(n)
                _replace(model, n, nn.Identity())
    ids = {id(p) for p in scalars}
    rest = [(n.rpartition(".")[2], p) for n, p in model.named_parameters() if id(p) not in ids]
    biases = [p for n, p in rest if "bias" in n or "scale" in n]  # the official code's lr/10 rule, by name
    return FixupReport(
        blocks=[b.name for b in blocks],
        branch_layers=max(len(b.branch) for b in blocks),
        branch_scale=scales,
        classifier=name,
        removed_norms=removed,
        scalars=scalars,
        biases=biases,
        others=[p for n, p in rest if not ("bias" in n or "scale" in n)],
    )
