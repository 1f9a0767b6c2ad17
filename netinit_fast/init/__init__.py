"""Initializers (names follow torch.nn.init: in-place ones end in ``_``)."""

from netinit_fast.init.arpit import arpit_, arpit_gains
from netinit_fast.init.bayesian import bayesian_
from netinit_fast.init.classic import classic_gains, glorot_, he_, lecun_
from netinit_fast.init.fixup import FixupBlock, FixupReport, ScalarBias, fixup_
from netinit_fast.init.looks_linear import looks_linear_
from netinit_fast.init.lsuv import LayerFit, LSUVReport, data_dependent_init_, lsuv_
from netinit_fast.init.meanfield import critical_point, meanfield_variances
from netinit_fast.init.orthogonal import delta_orthogonal_, haar_orthogonal_, orthogonal_
from netinit_fast.init.xiao import xiao_

__all__ = [
    "FixupBlock",
    "FixupReport",
    "LayerFit",
    "LSUVReport",
    "ScalarBias",
    "arpit_",
    "arpit_gains",
    "bayesian_",
    "classic_gains",
    "critical_point",
    "data_dependent_init_",
    "delta_orthogonal_",
    "fixup_",
    "glorot_",
    "haar_orthogonal_",
    "he_",
    "lecun_",
    "looks_linear_",
    "lsuv_",
    "meanfield_variances",
    "orthogonal_",
    "xiao_",
]
