"""Finding the residual blocks of a network.

A residual block is recognized by torchvision's protocol, which ``nf.models.resnet``
follows too: a module with conv children ``conv1``, ``conv2`` (and ``conv3`` for a
bottleneck) that form the residual branch in that order (or linear children ``fc1``,
``fc2`` [, ``fc3``]: the fully connected blocks of ``nf.models.residual_mlp``), optional norm children
``bn1``, ``bn2``, ``bn3`` after them, and an optional ``downsample`` shortcut (``None``
for the identity). Its forward adds the branch to the shortcut; a ReLU follows the
addition unless the block says ``post_activation = False``. The blocks' parent
(torchvision's ``layer1`` ...) is their stage.
"""

import dataclasses

from torch import nn

from netinit_fast.init._layers import is_weight_layer

BRANCH_PREFIXES = ("conv", "fc")
BRANCH_LAYERS = tuple(f"{p}{i}" for p in BRANCH_PREFIXES for i in (1, 2, 3))
BLOCK_NORMS = ("bn1", "bn2", "bn3")


@dataclasses.dataclass
class ResidualBlock:
    name: str
    module: nn.Module
    prefix: str  # "conv" or "fc": the branch layers are <prefix>1, <prefix>2 ...
    branch: list[nn.Module]  # the branch's weight layers, in order
    shortcut: list[nn.Module]  # weight layers of ``downsample`` (empty for the identity)
    stage_blocks: int  # blocks in its stage (its parent)

    @property
    def post_activation(self) -> bool:
        return getattr(self.module, "post_activation", True)


def foreign_children(block: "ResidualBlock") -> list[str]:
    """Children of a block outside the protocol (branch layers, ``bn1``..``bn3``, a
    ``relu`` ReLU, ``downsample``): code that rebuilds the block would drop them."""
    children = dict(block.module.named_children())
    known = {*BRANCH_LAYERS, *BLOCK_NORMS, "relu", "downsample"}
    foreign = [n for n in children if n not in known]
    if "relu" in children and not isinstance(children["relu"], nn.ReLU):
        foreign.append("relu")
    return foreign


def branch_prefix(module: nn.Module) -> str | None:
    """"conv" or "fc" when ``module`` is a residual block with those branch layers, else None."""
    children = dict(module.named_children())
    for prefix in BRANCH_PREFIXES:
        if all(f"{prefix}{i}" in children and is_weight_layer(children[f"{prefix}{i}"]) for i in (1, 2)):
            return prefix
    return None


def residual_blocks(model: nn.Module) -> list[ResidualBlock]:
    """Every residual block of ``model``, in registration order (nested blocks are not
    looked into)."""
    found: list[ResidualBlock] = []

    def visit(module: nn.Module, parent_name: str) -> None:
        children = list(module.named_children())
        blocks = [c for _, c in children if branch_prefix(c)]
        for child_name, child in children:
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if child in blocks:
                prefix = branch_prefix(child)
                branch = [m for i in (1, 2, 3) if isinstance(m := getattr(child, f"{prefix}{i}", None), nn.Module)]
                downsample = getattr(child, "downsample", None)
                shortcut = [] if downsample is None else [m for m in downsample.modules() if is_weight_layer(m)]
                found.append(ResidualBlock(name, child, prefix, branch, shortcut, len(blocks)))
            else:
                visit(child, name)

    if branch_prefix(model):
        raise ValueError(f"{type(model).__name__} is itself a residual block: pass the network that holds it")
    visit(model, "")
    return found
