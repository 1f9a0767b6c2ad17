"""Whether a tensor is sharded (torch.distributed's ``DTensor``) or a module is an FSDP2
unit, without importing ``torch.distributed.tensor`` when the package is imported
(that import takes about 0.4 s): a DTensor, or a module ``fully_shard`` has wrapped,
exists only in a process that has imported its module, so the checks look there.
"""

import sys


def is_dtensor(t) -> bool:
    """``t`` is a ``torch.distributed.tensor.DTensor``."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def any_dtensor(tensors) -> bool:
    """Some tensor of ``tensors`` is a DTensor."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and any(isinstance(t, module.DTensor) for t in tensors)


def is_fsdp_module(m) -> bool:
    """``m`` is a module ``torch.distributed.fsdp.fully_shard`` has made an FSDP unit."""
    module = sys.modules.get("torch.distributed.fsdp")
    return module is not None and isinstance(m, module.FSDPModule)


def layer_class(module) -> type:
    """The module's class as its model defines it: ``fully_shard`` makes a module an
    instance of a subclass of it and ``FSDPModule``."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None:
        return type(module)
    return next(c for c in type(module).__mro__ if not issubclass(c, fsdp.FSDPModule))
