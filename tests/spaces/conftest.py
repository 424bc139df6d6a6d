"""Toy models, data and fixtures shared by the ``spaces`` tests (random weights, everything seeded).

The project runs pytest with ``--import-mode=importlib``, so helpers are handed to tests as
fixtures rather than imported from here.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from search.models import ResNet, SmallCNN

INPUT_SHAPE = (1, 1, 28, 28)
WIDTHS = (8, 16, 32)
HIDDEN = 32


def seed_all(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding BN is not a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def make_small_cnn(seed: int = 0) -> nn.Module:
    seed_all(seed)
    return randomize_batchnorm(SmallCNN(widths=WIDTHS, hidden=HIDDEN), seed).eval()


def make_resnet8(seed: int = 0) -> nn.Module:
    seed_all(seed)
    return randomize_batchnorm(ResNet(depth=8), seed).eval()


class Prototypes:
    """Random-but-learnable 28x28 data: each class is a fixed random image plus noise."""

    def __init__(self, seed: int = 0, classes: int = 10, noise: float = 0.8) -> None:
        self.protos = torch.randn(classes, *INPUT_SHAPE[1:], generator=torch.Generator().manual_seed(seed))
        self.noise = noise

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        y = torch.randint(0, len(self.protos), (n,), generator=gen)
        x = self.protos[y] + self.noise * torch.randn(n, *INPUT_SHAPE[1:], generator=gen)
        return x, y


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    """Seed everything; one intra-op thread (tiny tensors, and the machine may be busy), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seed_all(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_cnn() -> nn.Module:
    return make_small_cnn()


@pytest.fixture
def resnet8() -> nn.Module:
    return make_resnet8()


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randn(8, *INPUT_SHAPE[1:], generator=torch.Generator().manual_seed(123))


@pytest.fixture(scope="session")
def trained_cnn() -> tuple[nn.Module, Prototypes]:
    """A SmallCNN trained for 40 Adam steps on prototype data (about 100% accuracy on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seed_all(0)
    data = Prototypes(seed=0)
    model = SmallCNN(widths=WIDTHS, hidden=HIDDEN)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(40):
        x, y = data.sample(64, seed=1000 + step)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return model.eval(), data


@pytest.fixture
def vit() -> nn.Module:
    """A small timm-style ViT (fused qkv, scaled_dot_product_attention), random weights, eval mode."""
    from search.models import ViT

    seed_all(0)
    return ViT(dim=32, depth=2, num_heads=4).eval()
