"""The models to compress: the zoo, torchvision adapters and a user's module with its checkpoint."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from search.data import Splits
from search.models import ResNet, SmallCNN, torchvision_model
from search.training.teacher import build_model, trained_teacher
from spaces import ChannelKnob, JointSpace, BitsKnob, ActivationBitsKnob


def tiny_splits(n: int = 64) -> Splits:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    return Splits(x, y, x, y, x, y, source="synthetic")


def test_zoo_models_have_the_documented_sizes():
    assert sum(p.numel() for p in SmallCNN().parameters()) == 241_770
    assert ResNet(depth=8)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="depth"):
        ResNet(depth=9)


def test_torchvision_model_is_adapted_and_prunable():
    torch.manual_seed(0)
    net = torchvision_model(name="resnet18", num_classes=10, in_channels=1).eval()
    assert net.conv1.in_channels == 1 and net.fc.out_features == 10
    space = JointSpace([ChannelKnob(model=net, input_shape=(1, 1, 28, 28)), BitsKnob(model=net), ActivationBitsKnob(model=net)])
    params = space.identity() | space["channels"].uniform(0.5)
    small = space.apply(net, params)
    assert small(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters()) / 3
    with pytest.raises(ValueError, match="model.name: 'resnet_nope'"):
        torchvision_model(name="resnet_nope")


def test_user_module_with_checkpoint_is_loaded_not_trained(tmp_path):
    cfg = OmegaConf.create({
        "name": "custom", "net": {"_target_": "search.models.ResNet", "depth": 8},
        "checkpoint": str(tmp_path / "weights.pt"), "train": {"epochs": 1, "lr": 0.1, "batch_size": 8, "seed": 0},
    })
    splits = tiny_splits()
    source_net = build_model(cfg, splits)
    with torch.no_grad():
        source_net.fc.bias.fill_(3.0)
    torch.save(source_net.state_dict(), tmp_path / "weights.pt")
    net, source = trained_teacher(build_model(cfg, splits), cfg, "k", splits, tmp_path / "cache")
    assert source.startswith("checkpoint") and torch.equal(net.fc.bias, torch.full((10,), 3.0))
    assert not (tmp_path / "cache").exists()  # nothing trained, nothing cached


def test_bad_models_are_refused_with_the_key():
    splits = tiny_splits()
    wrong_head = OmegaConf.create({"name": "x", "net": {"_target_": "torch.nn.Flatten"}, "train": {"seed": 0}})
    with pytest.raises(ValueError, match=r"model.net: output shape"):
        build_model(wrong_head, splits)
    missing = OmegaConf.create({"name": "x", "net": {"_target_": "nopkg.Net"}, "train": {"seed": 0}})
    with pytest.raises(ValueError, match="model.net: cannot build 'nopkg.Net'"):
        build_model(missing, splits)
    cfg = OmegaConf.create({"name": "c", "net": {"_target_": "search.models.SmallCNN"}, "checkpoint": "/no/such.pt",
                            "train": {"epochs": 1, "lr": 0.1, "batch_size": 8, "seed": 0}})
    with pytest.raises(FileNotFoundError, match="model.checkpoint"):
        trained_teacher(nn.Linear(1, 1), cfg, "k", splits, None)
