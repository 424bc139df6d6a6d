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


# --------------------------------------------------------------------------- any input size


class _FixedFlatten(SmallCNN):
    """SmallCNN's forward before it pooled other input sizes: features flattened straight into fc1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.features(x), 1))))


def test_small_cnn_at_28x28_is_unchanged_by_adaptive_pooling():
    from spaces import fold_batchnorm
    from spaces.fold import conv_bn_pairs
    from spaces.materialize import export_onnx

    torch.manual_seed(0)
    net = SmallCNN().eval()
    fixed = _FixedFlatten().eval()
    fixed.load_state_dict(net.state_dict())
    names = [n for n, _ in net.named_parameters()]
    assert names[:2] == ["features.0.weight", "features.1.weight"] and names[-4:] == [
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert {"features.4.weight", "features.8.weight"} <= set(names) and list(net.state_dict()) == list(fixed.state_dict())
    assert sum(p.numel() for p in net.parameters()) == 241_770
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(net(x), fixed(x))
    assert conv_bn_pairs(net) == conv_bn_pairs(fixed) and len(conv_bn_pairs(net)) == 3  # FX still traces it
    assert export_onnx(fold_batchnorm(net), (1, 1, 28, 28)) == export_onnx(fold_batchnorm(fixed), (1, 1, 28, 28))


@pytest.mark.parametrize(("channels", "side"), [(3, 32), (1, 20), (3, 50)])
def test_zoo_models_take_any_input_size_and_export_it(channels, side):
    import numpy as np
    import onnxruntime as ort

    from spaces.materialize import export_onnx

    x = torch.randn(3, channels, side, side, generator=torch.Generator().manual_seed(0))
    for net in (SmallCNN(num_classes=7, in_channels=channels), ResNet(depth=8, num_classes=7, in_channels=channels)):
        net.eval()
        with torch.no_grad():
            out = net(x)
        assert out.shape == (3, 7)
        session = ort.InferenceSession(export_onnx(net, (1, channels, side, side)), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert np.allclose(got, out.numpy(), atol=1e-4), type(net).__name__


def test_adaptive_pooling_matches_pytorchs_bins():
    from spaces.materialize import _bins

    x = torch.randn(2, 4, 7, 10, generator=torch.Generator().manual_seed(0))
    by_matrix = _bins(7, 3) @ x @ _bins(10, 3).t()
    torch.testing.assert_close(by_matrix, torch.nn.functional.adaptive_avg_pool2d(x, 3))
