"""The data a search scores trials on: fixed, seeded train / validation / test splits (``Splits``)."""
from .fashion_mnist import CLASSES, DEBIAN_ROOT, MEAN, STD, Splits, load, locate, read_idx

__all__ = ["Splits", "load", "locate", "read_idx", "CLASSES", "DEBIAN_ROOT", "MEAN", "STD"]
