"""The bits knob: weights at b bits, affine per output channel."""
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


class TestBitsKnob(KnobContract):
    knob = "bits"
    active = 4
    bad = [1, 16, 64, "8"]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_bits_limit_distinct_values_per_output_channel(small_cnn, bits):
    space = BitsKnob(model=small_cnn, choices=(2, 3, 4, 8, 32))  # the knob alone: no BN folding
    teacher = small_cnn.fc1.weight.detach()  # 288 inputs per output: more than 2**8 values
    assert all(len(torch.unique(row)) > 2**bits for row in teacher)  # so the limit means something
    out = space.apply(small_cnn, {**space.identity(), "bits.fc1": bits})
    w = _weights(out)
    for row_q, row in zip(w["fc1"], teacher):
        assert len(torch.unique(row_q)) <= 2**bits
        step = (row.max().clamp(min=0) - row.min().clamp(max=0)) / (2**bits - 1)
        assert (row_q - row).abs().max() <= step / 2 + 1e-6  # nearest level, never further
    assert torch.equal(w["fc2"], small_cnn.fc2.weight.detach())
    assert torch.equal(w["features.8"], small_cnn.features[8].weight.detach())


def test_act_bits_install_a_quantizer_only_where_weights_are_quantized(small_cnn):
    space = JointSpace([BitsKnob(model=small_cnn), ActivationBitsKnob(model=small_cnn)])
    params = {
        **space.identity(),
        "bits.features.4": 8, "abits.features.4": 8,
        "bits.fc1": 32, "abits.fc1": 8,  # float weights: no int8 kernel, no activation quantizer
        "bits.fc2": 4, "abits.fc2": 32,
    }
    out = space.apply(small_cnn, params)
    assert isinstance(out.features[4].act, ActFakeQuant) and out.features[4].act.bits == 8
    assert getattr(out.fc1, "act", None) is None
    assert out.fc2.act is None
    assert [isinstance(m, ActFakeQuant) for m in out.modules()].count(True) == 1
    assert layer_bits(out.features[4]) == (8, 8) and layer_bits(out.fc2) == (4, 32)
    assert layer_bits(out.features[0]) == (32, 32)
    assert int8_layers(out) == ["features.4"]


