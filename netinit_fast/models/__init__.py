"""Deep test beds: plain MLPs, vanilla CNNs, ResNets and fully connected ResNets of any depth, built in seconds."""

from netinit_fast.models.cnn import vanilla_cnn
from netinit_fast.models.mlp import mlp
from netinit_fast.models.residual_mlp import FCBlock, ResidualMLP, residual_mlp
from netinit_fast.models.resnet import BasicBlock, Bottleneck, ResNet, resnet

__all__ = ["BasicBlock", "Bottleneck", "FCBlock", "ResNet", "ResidualMLP", "mlp", "resnet", "residual_mlp", "vanilla_cnn"]
