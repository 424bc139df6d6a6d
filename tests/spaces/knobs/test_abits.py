"""The abits knob: a calibrated 8-bit range on the inputs of layers with quantized weights."""
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


class TestActivationBitsKnob(KnobContract):
    knob = "abits"
    active = 8
    bad = [4, 16, "8"]
    context = ("bits",)  # only layers whose weights are quantized take an input quantizer


def test_act_quantizer_rounds_inputs_to_256_levels(small_cnn, batch):
    space = JointSpace([BitsKnob(model=small_cnn), ActivationBitsKnob(model=small_cnn)])
    out = space.apply(small_cnn, {**space.identity(), "bits.fc2": 8, "abits.fc2": 8})
    seen = []
    out.fc2.act.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    spaces.calibrate(out, [batch])
    with torch.no_grad():
        out(batch)
    assert len(torch.unique(seen[-1])) <= 256
    assert len(torch.unique(seen[-1])) > 16


