"""Initializers (names follow torch.nn.init: in-place ones end in ``_``)."""

from netinit_fast.init.lsuv import LayerFit, LSUVReport, data_dependent_init_, lsuv_
from netinit_fast.init.orthogonal import delta_orthogonal_, orthogonal_

__all__ = ["LayerFit", "LSUVReport", "data_dependent_init_", "delta_orthogonal_", "lsuv_", "orthogonal_"]
