"""The rank knob: a layer replaced by the two factors of its truncated SVD, where that stores fewer weights."""
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


class TestRankKnob(KnobContract):
    knob = "rank"
    active = 0.25
    bad = [0.3, 0.0, 2.0, "0.25"]


def test_rank_quarter_of_a_linear_is_two_linears_of_rank_32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128)).eval()
    space = RankKnob(model=model)
    out = space.apply(model, {"rank.0": 0.25})
    seq = out[0]
    assert isinstance(seq, nn.Sequential) and len(seq) == 2
    first, second = seq
    assert isinstance(first, nn.Linear) and (first.in_features, first.out_features) == (256, 32)
    assert isinstance(second, nn.Linear) and (second.in_features, second.out_features) == (32, 128)
    assert first.bias is None and torch.equal(second.bias, model[0].bias)
    x = torch.randn(4, 256)
    product = second.weight @ first.weight
    torch.testing.assert_close(out(x), x @ product.T + model[0].bias, atol=1e-5, rtol=1e-5)


def test_rank_error_is_the_svd_optimum_and_decreases_with_rank():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128)).eval()
    w = model[0].weight.detach()
    sv = torch.linalg.svdvals(w)
    space = RankKnob(model=model, ratios=(0.0625, 0.125, 0.25, 0.5, 0.75))
    errors = []
    for ratio in (0.0625, 0.125, 0.25, 0.5):
        first, second = space.apply(model, {"rank.0": ratio})[0]
        r = first.out_features
        assert r == round(ratio * 128)
        err = torch.linalg.norm(second.weight.detach() @ first.weight.detach() - w) / torch.linalg.norm(w)
        optimum = torch.sqrt((sv[r:] ** 2).sum()) / torch.linalg.norm(w)  # Eckart-Young
        assert abs(float(err) - float(optimum)) < 1e-4
        errors.append(float(err))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    # rank 96 would store 96 * (256 + 128) > 256 * 128 weights: the layer is left alone
    out = space.apply(model, {"rank.0": 0.75})
    assert type(out[0]) is nn.Linear and torch.equal(out[0].weight, model[0].weight)


def test_rank_factorizes_a_conv_into_kxk_then_1x1():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, padding=1, stride=2)
    model = nn.Sequential(conv).eval()
    out = RankKnob(model=model).apply(model, {"rank.0": 0.25})
    first, second = out[0]
    assert first.weight.shape == (8, 16, 3, 3) and first.stride == (2, 2) and first.padding == (1, 1)
    assert second.weight.shape == (32, 8, 1, 1)
    x = torch.randn(2, 16, 10, 10)
    w = (second.weight.reshape(32, 8) @ first.weight.reshape(8, -1)).reshape(conv.weight.shape)
    torch.testing.assert_close(out(x), F.conv2d(x, w, conv.bias, stride=2, padding=1), atol=1e-5, rtol=1e-5)


class StemNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 1)  # fan-in 1: r * (1 + 16) >= 16 for every r >= 1
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # grouped: never factorized
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.dw(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_rank_leaves_layers_alone_where_factorizing_saves_nothing(batch):
    model = StemNet().eval()
    space = RankKnob(model=model)
    assert space.layers == ["conv", "fc"]
    assert "rank.stem" not in space.identity() and "rank.dw" not in space.identity()
    out = space.apply(model, space.uniform(0.125))
    assert type(out.stem) is nn.Conv2d and torch.equal(out.stem.weight, model.stem.weight)
    assert type(out.dw) is nn.Conv2d and torch.equal(out.dw.weight, model.dw.weight)
    assert isinstance(out.conv, nn.Sequential) and isinstance(out.fc, nn.Sequential)
    # a ratio whose rank would store more weights than the layer leaves that layer alone too
    wide = nn.Sequential(nn.Linear(8, 8)).eval()
    space = RankKnob(model=wide, ratios=(0.5, 0.75))  # r=4: 4*16 = 64 = 64 saves nothing; r=6 neither
    assert space.layers == []


def test_rank_follows_the_saving_rule_exactly():
    from spaces.knobs.rank import rank_for

    cases = [
        # layer, ratio, expected rank (None = left alone)
        (nn.Linear(256, 128), 0.25, 32),
        (nn.Linear(8, 8), 0.375, 3),  # 3 * 16 = 48 < 64
        (nn.Linear(8, 8), 0.5, None),  # 4 * 16 = 64, not < 64
        (nn.Conv2d(1, 16, 3), 0.75, None),  # r = round(6.75) = 7: 7 * 25 = 175 > 144
        (nn.Conv2d(1, 16, 1), 0.125, None),
        (nn.Linear(10, 10), 1.0, None),
    ]
    for layer, ratio, expected in cases:
        assert rank_for(layer, ratio) == expected, (layer, ratio)


