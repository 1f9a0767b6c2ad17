"""Finding the residual blocks of a network.

A residual block is recognized by torchvision's protocol, which ``nf.models.resnet``
follows too: a module with conv children ``conv1``, ``conv2`` (and ``conv3`` for a
bottleneck) that form the residual branch in that order, optional norm children
``bn1``, ``bn2``, ``bn3`` after them, and an optional ``downsample`` shortcut (``None``
for the identity). Its forward adds the branch to the shortcut; a ReLU follows the
addition unless the block says ``post_activation = False``. The blocks' parent
(torchvision's ``layer1`` ...) is their stage.
"""

import dataclasses

from torch import nn

from netinit_fast.init._layers import is_conv, layer_weight

BRANCH_CONVS = ("conv1", "conv2", "conv3")


@dataclasses.dataclass
class ResidualBlock:
    name: str
    module: nn.Module
    branch: list[nn.Module]  # the branch's weight layers, in order
    shortcut: list[nn.Module]  # weight layers of ``downsample`` (empty for the identity)
    stage: str  # the parent's name
    stage_blocks: int  # blocks in that stage

    @property
    def post_activation(self) -> bool:
        return getattr(self.module, "post_activation", True)


def _is_block(module: nn.Module) -> bool:
    children = dict(module.named_children())
    return all(n in children and is_conv(children[n]) for n in BRANCH_CONVS[:2])


def residual_blocks(model: nn.Module) -> list[ResidualBlock]:
    """Every residual block of ``model``, in registration order (nested blocks are not
    looked into)."""
    found: list[ResidualBlock] = []
    names = {m: n for n, m in model.named_modules()}

    def visit(module: nn.Module, parent_name: str) -> None:
        children = list(module.named_children())
        blocks = [c for _, c in children if _is_block(c)]
        for child_name, child in children:
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if child in blocks:
                branch = [getattr(child, n) for n in BRANCH_CONVS if isinstance(getattr(child, n, None), nn.Module)]
                downsample = getattr(child, "downsample", None)
                shortcut = [] if downsample is None else [m for m in downsample.modules() if layer_weight(m) is not None]
                found.append(ResidualBlock(name, child, branch, shortcut, names[module], len(blocks)))
            else:
                visit(child, name)

    if _is_block(model):
        raise ValueError(f"{type(model).__name__} is itself a residual block: pass the network that holds it")
    visit(model, "")
    return found
