"""The sparsity knob: the smallest-magnitude weights of a layer set to zero, exactly floor(s * n) of them."""
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


class TestSparsityKnob(KnobContract):
    knob = "sparsity"
    active = 0.5
    bad = [1.0, -0.1, float("nan"), "0.5"]


class OddNet(nn.Module):
    """Layers whose weight counts are odd, so floor(sparsity * n) is not n / 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)  # 135 weights
        self.fc = nn.Linear(5, 7)  # 35 weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1))


@pytest.mark.parametrize("fqn", ["conv", "fc"])
@pytest.mark.parametrize("sparsity", [0.5, 0.3, 0.9])
def test_sparsity_zeroes_exactly_floor_of_the_fraction_smallest_weights(fqn, sparsity):
    model = OddNet().eval()
    space = SparsityKnob(model=model)
    out = space.apply(model, {**space.identity(), f"sparsity.{fqn}": sparsity})
    teacher = model.get_submodule(fqn).weight.detach()
    assert int((teacher == 0).sum()) == 0
    got = _weights(out)
    n = teacher.numel()
    zero = got[fqn] == 0
    assert int(zero.sum()) == math.floor(sparsity * n)
    # the zeroed weights are the smallest by magnitude; kept ones are unchanged
    assert teacher[zero].abs().max() <= teacher[~zero].abs().min()
    assert torch.equal(got[fqn][~zero], teacher[~zero])
    # the other layer is untouched
    other = "fc" if fqn == "conv" else "conv"
    assert torch.equal(got[other], model.get_submodule(other).weight.detach())


def test_sparsity_on_a_small_cnn_layer(small_cnn):
    space = SparsityKnob(model=small_cnn)
    out = space.apply(small_cnn, {**space.identity(), "sparsity.features.4": 0.5})
    w = _weights(out)["features.4"]
    assert w.numel() == 16 * 8 * 9
    assert int((w == 0).sum()) == 16 * 8 * 9 // 2
    assert int((_weights(out)["features.8"] == 0).sum()) == 0


def test_sparsity_zeros_survive_quantization(small_cnn):
    space = JointSpace([SparsityKnob(model=small_cnn), BitsKnob(model=small_cnn), ActivationBitsKnob(model=small_cnn)])
    params = space.with_values(sparsity={"sparsity.fc1": 0.75}, bits={"bits.fc1": 3, "abits.fc1": 32})
    out = space.apply(small_cnn, params)
    layer = out.fc1
    assert layer.weight_mask is not None and layer.wbits == 3
    w = _weights(out)["fc1"]
    assert torch.all(w[layer.weight_mask == 0] == 0)
    assert int((w == 0).sum()) >= math.floor(0.75 * w.numel())


