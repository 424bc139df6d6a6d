"""The models to compress: a small zoo for any input size (``SmallCNN``, ``ResNet``), torchvision adapters, and
transformers as timm and Hugging Face write them (``ViT``, ``TextTransformer``)."""
from .transformers import TextTransformer, ViT
from .zoo import BasicBlock, ResNet, SmallCNN, conv, torchvision_model

__all__ = ["SmallCNN", "ResNet", "BasicBlock", "conv", "torchvision_model", "ViT", "TextTransformer"]
