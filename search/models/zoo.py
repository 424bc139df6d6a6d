"""The models to compress: a small zoo made for 28x28 inputs (any size works), torchvision adapters, users' modules.

The zoo models also take the knobs of their student families (``conf/model/*.yaml: student``): a width
multiplier, a depth, a kernel size and depthwise-separable convolutions. Their defaults build the teachers
exactly as before (same layers, same names, same parameter counts).
"""
from __future__ import annotations

import torch
from torch import nn

from spaces.materialize import adaptive_avg_pool


def _scaled(width: int, width_mult: float) -> int:
    """``width * width_mult`` rounded, at least 4 channels (a narrower layer carries almost nothing)."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult=}")
    return max(4, round(width * width_mult))


def _check_kernel(kernel_size: int) -> None:
    if kernel_size not in (3, 5, 7):
        raise ValueError(f"kernel_size must be 3, 5 or 7, got {kernel_size=}")


def conv(cin: int, cout: int, kernel_size: int = 3, stride: int = 1, *, separable: bool = False) -> nn.Module:
    """A k x k convolution (no bias: BatchNorm follows), or its depthwise-separable form: a depthwise k x k
    then a pointwise 1 x 1 with BatchNorm + ReLU between them (MobileNet, Howard et al. 2017)."""
    pad = kernel_size // 2
    if not separable:
        return nn.Conv2d(cin, cout, kernel_size, stride, pad, bias=False)
    return nn.Sequential(
        nn.Conv2d(cin, cin, kernel_size, stride, pad, groups=cin, bias=False), nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False),
    )


def _conv_bn(cin: int, cout: int, kernel_size: int = 3, *, separable: bool = False) -> list[nn.Module]:
    return [conv(cin, cout, kernel_size, separable=separable), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@torch.fx.wrap  # a leaf for FX (conv+BN folding traces the model): the size test needs the real shape
def _to_side(x: torch.Tensor, side: int) -> torch.Tensor:
    """``x`` as it is where its feature map is side x side (a 28 x 28 input: nothing added), else pooled to it."""
    if tuple(x.shape[-2:]) == (side, side):
        return x
    return adaptive_avg_pool(x, side)


class SmallCNN(nn.Module):
    """Three conv+BN+ReLU+max-pool stages and a two-layer classifier (241,770 parameters by default).

    Made for 28 x 28 inputs (fc1 reads a 3 x 3 feature map); any other size is pooled to 3 x 3 first (adaptive
    average pooling), so at 28 x 28 nothing is added: the same layers, weights and outputs.

    Student knobs: ``width_mult`` scales every width and the hidden layer; ``depth`` convolutions per stage;
    ``kernel_size``; ``separable`` makes every convolution but the first (1 input channel) depthwise-separable.
    """

    def __init__(
        self, *, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128),
        hidden: int = 128, width_mult: float = 1.0, depth: int = 1, kernel_size: int = 3, separable: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth (convolutions per stage) must be >= 1, got {depth=}")
        _check_kernel(kernel_size)
        layers, cin = [], in_channels
        for w in (_scaled(w, width_mult) for w in widths):
            for _ in range(depth):
                layers += _conv_bn(cin, w, kernel_size, separable=separable and cin > in_channels)
                cin = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.side = 28 // 2 ** len(widths)  # the feature map of a 28 x 28 input; fc1 reads side x side per channel
        hidden = _scaled(hidden, width_mult)
        self.fc1 = nn.Linear(cin * self.side * self.side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _to_side(self.features(x), self.side)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class BasicBlock(nn.Module):
    """A ResNet basic block: two k x k conv+BN, ReLU between, a 1x1 conv+BN shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, kernel_size: int = 3, separable: bool = False) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, kernel_size, stride, separable=separable)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout, kernel_size, 1, separable=separable)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, sec. 4.2), any input size (global average pooling): ``depth = 6n + 2``.

    Student knobs: ``width_mult`` scales the widths, ``kernel_size`` the blocks' convolutions, ``separable``
    makes the blocks' convolutions depthwise-separable (the stem and the 1x1 shortcuts stay as they are).
    """

    def __init__(
        self, *, depth: int = 8, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64),
        width_mult: float = 1.0, kernel_size: int = 3, separable: bool = False,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"model.depth must be 6n + 2 (8, 14, 20, ...), got {depth=}")
        _check_kernel(kernel_size)
        widths = tuple(_scaled(w, width_mult) for w in widths)
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1, kernel_size, separable))
                cin = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def torchvision_model(*, name: str, num_classes: int = 10, in_channels: int = 1, **kwargs) -> nn.Module:
    """Any torchvision classifier by name, its stem adapted to ``in_channels`` and head to ``num_classes``."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(f"model.name: {name!r} is not a torchvision classification model; choose from {available}")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):  # the first conv in registration order is the stem
                if child.in_channels != in_channels:
                    setattr(parent, child_name, nn.Conv2d(
                        in_channels, child.out_channels, child.kernel_size, child.stride,
                        child.padding, child.dilation, child.groups, child.bias is not None,
                    ))
                return model
    return model
