"""The channels knob: whole output channels removed, with every layer coupled to them (Torch-Pruning)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spaces
from spaces import ActivationBitsKnob, BitsKnob, ChannelKnob, JointSpace, RankKnob, SparsityKnob
from spaces._compressed import ActFakeQuant, layer_bits
from spaces.materialize import int8_layers
from tests.spaces.knob_contract import KnobContract

INPUT_SHAPE = (1, 1, 28, 28)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Effective (masked, quantized) weight of every Conv2d/Linear, via the plain model."""
    plain = spaces.to_plain(model)
    return {n: m.weight.detach() for n, m in plain.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


class TestChannelKnob(KnobContract):
    knob = "channels"
    active = 0.5
    bad = [1.0, -0.125, 1.5, float("nan"), "0.5"]


def _rows_of(pruned: torch.Tensor, full: torch.Tensor) -> list[int]:
    """Indices of ``full``'s rows that make up ``pruned`` (each must be found exactly)."""
    idx = []
    for row in pruned:
        hits = [i for i in range(len(full)) if torch.equal(full[i], row)]
        assert len(hits) == 1, "a kept channel is not an original channel"
        idx.append(hits[0])
    return idx


def test_channel_ratio_halves_a_conv_and_the_next_layers_inputs(small_cnn, batch):
    space = ChannelKnob(model=small_cnn, input_shape=INPUT_SHAPE)
    assert "features.0" in space.layers and "fc2" not in space.layers  # the classifier is never pruned
    out = space.apply(small_cnn, {**space.identity(), "channels.features.0": 0.5})
    conv, bn, nxt = out.features[0], out.features[1], out.features[4]
    assert conv.out_channels == 4 and bn.num_features == 4 and nxt.in_channels == 4
    assert out.features[4].out_channels == 16 and out.features[8].out_channels == 32  # untouched
    kept = _rows_of(conv.weight.detach(), small_cnn.features[0].weight.detach())
    assert kept == sorted(kept) and len(set(kept)) == 4
    # the same channels are removed from the BN and from the next conv's inputs
    assert torch.equal(bn.running_mean, small_cnn.features[1].running_mean[kept])
    assert torch.equal(nxt.weight.detach(), small_cnn.features[4].weight.detach()[:, kept])
    assert out(batch).shape == (len(batch), 10)


def test_channel_ratio_on_a_linear_hidden_layer(small_cnn, batch):
    space = ChannelKnob(model=small_cnn, input_shape=INPUT_SHAPE)
    out = space.apply(small_cnn, {**space.identity(), "channels.fc1": 0.5})
    assert out.fc1.out_features == 16 and out.fc2.in_features == 16 and out.fc2.out_features == 10
    assert out(batch).shape == (len(batch), 10)


def test_channel_uniform_ratio_prunes_every_group(small_cnn, batch):
    space = ChannelKnob(model=small_cnn, input_shape=INPUT_SHAPE)
    out = space.apply(small_cnn, space.uniform(0.75))
    assert [out.features[i].out_channels for i in (0, 4, 8)] == [2, 4, 8]
    assert [out.features[i].in_channels for i in (4, 8)] == [2, 4]
    assert out.fc1.in_features == 8 * 3 * 3 and out.fc1.out_features == 8
    assert out(batch).shape == (len(batch), 10)


def test_resnet_residual_groups_are_pruned_consistently(resnet8, batch):
    space = ChannelKnob(model=resnet8, input_shape=INPUT_SHAPE)
    # the residual stream of each stage is one group: conv2 of a block is coupled, not a root
    assert "conv1" in space.layers and "layers.1.shortcut.0" in space.layers
    assert "layers.0.conv2" not in space.layers and "layers.1.conv2" not in space.layers
    out = space.apply(resnet8, {**space.identity(), "channels.conv1": 0.5})
    stem = 8  # 16 channels, half removed
    assert out.conv1.out_channels == stem and out.bn1.num_features == stem
    b0, b1 = out.layers[0], out.layers[1]
    assert b0.conv1.in_channels == stem and b0.conv1.out_channels == 16  # inner width untouched
    assert b0.conv2.out_channels == stem and b0.bn2.num_features == stem  # residual add partner
    assert b1.conv1.in_channels == stem and b1.shortcut[0].in_channels == stem
    assert b1.conv2.out_channels == 32
    assert out(batch).shape == (len(batch), 10)

    out = space.apply(resnet8, space.uniform(0.5))
    for block, width in zip(out.layers, (8, 16, 32)):
        assert block.conv1.out_channels == width and block.conv2.out_channels == width
        assert block.bn1.num_features == width and block.bn2.num_features == width
        assert block.conv2.in_channels == block.conv1.out_channels
    assert out.layers[1].shortcut[0].out_channels == out.layers[1].conv2.out_channels == 16
    assert out.layers[2].conv1.in_channels == out.layers[1].conv2.out_channels
    assert out.fc.in_features == 32 and out.fc.out_features == 10
    assert out(batch).shape == (len(batch), 10)


