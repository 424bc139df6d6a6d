"""A user model of the shapes the tests never saw otherwise: a stem, two branches concatenated (one a grouped 3x3
convolution), a grouped convolution fed by the concatenation, a channel shuffle, one convolution used twice, SiLU,
adaptive pooling, ``nn.Flatten`` and two Linear layers (``model=custom model.net._target_=tests.spaces.odd_net.OddNet``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class OddNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU())
        self.left = nn.Conv2d(16, 16, 1)
        self.right = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.SiLU())
        self.mix = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=4), nn.BatchNorm2d(32))
        self.shared = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 64), nn.SiLU(),
                                  nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        x = channel_shuffle(F.silu(self.mix(x)), 4)
        x = F.silu(self.shared(x))
        x = F.silu(self.shared(x))  # the same module twice
        return self.head(x)
