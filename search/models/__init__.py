"""The models to compress: a small zoo for any input size (``SmallCNN``, ``ResNet``) and torchvision adapters."""
from .zoo import BasicBlock, ResNet, SmallCNN, conv, torchvision_model

__all__ = ["SmallCNN", "ResNet", "BasicBlock", "conv", "torchvision_model"]
