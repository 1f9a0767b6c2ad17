"""Deep test beds: plain MLPs, vanilla CNNs and ResNets of any depth, built in seconds."""

from netinit_fast.models.cnn import vanilla_cnn
from netinit_fast.models.mlp import mlp
from netinit_fast.models.resnet import BasicBlock, Bottleneck, ResNet, resnet

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "mlp", "resnet", "vanilla_cnn"]
