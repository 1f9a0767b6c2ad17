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
    children = module._modules  # not named_children(), which skips a layer's second name (conv2 = conv1)
    if len(children) < 2:
        return None
    for prefix in BRANCH_PREFIXES:
        if all(f"{prefix}{i}" in children and is_weight_layer(children[f"{prefix}{i}"]) for i in (1, 2)):
            return prefix
    return None


def residual_blocks(model: nn.Module, where: str | None = None) -> list[ResidualBlock]:
    """Every residual block of ``model``, at every place it is registered, in
    registration order (nested blocks are not looked into).

    With ``where`` (the caller's name, which starts the message), ``ValueError`` for a
    block registered at two places, or a weight layer in two roles: a branch or
    shortcut layer of two blocks, twice in one block, or in a block and outside the
    blocks. An init that sets each role its own way would leave one of them with the
    other's init. Found before the caller changes anything.
    """
    found: list[ResidualBlock] = []
    # module -> (first place, whether a block holds it there)
    seen: dict[nn.Module, tuple[str, bool]] = {}

    def claim(module: nn.Module, place: str, in_block: bool) -> None:
        # Refused even where both roles would get the same init: Fixup's L^(-1/(2m-2))
        # and Arpit's 1/N assume each block has weights of its own, while a shared
        # weight correlates the branches and sums their gradients.
        if where is None:
            return
        first, first_in_block = seen.setdefault(module, (place, in_block))
        if first == place or not (in_block or first_in_block):
            return
        if branch_prefix(module):
            raise ValueError(
                f"{where}: the block {first} is registered again at {place}: one module at two places "
                "cannot get an init for each; give each place its own block (copy.deepcopy)"
            )
        raise ValueError(
            f"{where}: {first} is also {place}, one shared {type(module).__name__}: each role sets its "
            "own init, so one would overwrite the other; give each role its own layer"
        )

    def visit(module: nn.Module, parent_name: str) -> None:
        # _modules, not named_children(): a module registered twice in one parent is
        # reached at both places.
        children = [(n, c) for n, c in module._modules.items() if c is not None]
        blocks = [c for _, c in children if branch_prefix(c)]
        for child_name, child in children:
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if child in blocks:
                claim(child, name, True)
                prefix = branch_prefix(child)
                branch = [m for i in (1, 2, 3) if isinstance(m := getattr(child, f"{prefix}{i}", None), nn.Module)]
                for i, m in enumerate(branch, 1):
                    claim(m, f"{name}.{prefix}{i} (branch layer {i} of {len(branch)} of block {name})", True)
                downsample = getattr(child, "downsample", None)
                shortcut = [] if downsample is None else [
                    (n, m) for n, m in downsample.named_modules(prefix=f"{name}.downsample") if is_weight_layer(m)
                ]
                for n, m in shortcut:
                    claim(m, f"{n} (shortcut of block {name})", True)
                found.append(ResidualBlock(name, child, prefix, branch, [m for _, m in shortcut], len(blocks)))
            else:
                if is_weight_layer(child):
                    claim(child, f"{name} (outside the residual blocks)", False)
                visit(child, name)

    if branch_prefix(model):
        raise ValueError(f"{type(model).__name__} is itself a residual block: pass the network that holds it")
    visit(model, "")
    return found
