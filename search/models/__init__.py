"""The models to compress: a small zoo for 28x28 inputs (``SmallCNN``, ``ResNet``) and torchvision adapters."""
from .zoo import BasicBlock, ResNet, SmallCNN, conv, torchvision_model

__all__ = ["SmallCNN", "ResNet", "BasicBlock", "conv", "torchvision_model"]
