"""The tucker knob: a k x k convolution becomes 1x1 -> k x k core -> 1x1 by HOSVD, only where that saves weights;
size and latency really change."""
from __future__ import annotations

import copy

import onnx
import pytest
import torch
from torch import nn

import spaces
from spaces.knobs.tucker import TuckerKnob, decompose, tucker_ranks
from tests.spaces.knob_contract import KnobContract

INPUT_SHAPE = (1, 1, 28, 28)


class TestTuckerKnob(KnobContract):
    knob = "tucker"
    active = 0.5
    bad = [0.3, 0.0, 2.0, "0.5", True]


def test_a_conv_becomes_1x1_then_the_kxk_core_then_1x1_with_the_ranks_asked():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=True)
    assert tucker_ranks(conv, 0.5) == (8, 16)
    seq = decompose(conv, 8, 16)
    assert [tuple(m.weight.shape) for m in seq] == [(8, 16, 1, 1), (16, 8, 3, 3), (32, 16, 1, 1)]
    assert (seq[1].stride, seq[1].padding) == ((2, 2), (1, 1)) and seq[2].bias is not None
    x = torch.randn(2, 16, 9, 9)
    assert seq(x).shape == conv(x).shape


def test_full_ranks_reproduce_the_layer_and_error_falls_as_ranks_grow():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1)
    x = torch.randn(4, 8, 10, 10)
    with torch.no_grad():
        exact = decompose(conv, 8, 12)(x)
        torch.testing.assert_close(exact, conv(x), atol=1e-5, rtol=1e-4)
        errors = [float((decompose(conv, r, r)(x) - conv(x)).norm()) for r in (2, 4, 6, 8)]
    assert errors == sorted(errors, reverse=True)


def test_hosvd_factors_are_orthonormal_and_the_core_is_the_projection():
    torch.manual_seed(1)
    conv = nn.Conv2d(10, 14, 3, bias=False)
    seq = decompose(conv, 5, 7)
    u_in = seq[0].weight.detach().reshape(5, 10).t()
    u_out = seq[2].weight.detach().reshape(14, 7)
    torch.testing.assert_close(u_in.t() @ u_in, torch.eye(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(u_out.t() @ u_out, torch.eye(7), atol=1e-5, rtol=0)
    core = torch.einsum("oikl,or,is->rskl", conv.weight.detach(), u_out, u_in)
    torch.testing.assert_close(seq[1].weight.detach(), core)


def test_layers_where_it_saves_nothing_are_left_alone(small_cnn):
    def saves(conv: nn.Conv2d, ratio: float) -> bool:  # the rule, worked out by hand
        c_out, c_in, k, _ = conv.weight.shape
        r_in, r_out = max(1, round(ratio * c_in)), max(1, round(ratio * c_out))
        return c_in * r_in + r_in * r_out * k * k + r_out * c_out < c_out * c_in * k * k

    knob = TuckerKnob(model=small_cnn)
    convs = {n: m for n, m in small_cnn.named_modules() if isinstance(m, nn.Conv2d)}
    assert knob.layers == [n for n, m in convs.items() if any(saves(m, r) for r in (0.25, 0.5, 0.75))]
    assert "fc1" not in knob.layers and "fc2" not in knob.layers  # Linear layers are the rank knob's
    assert tucker_ranks(nn.Conv2d(16, 16, 1), 0.25) is None  # a 1x1 convolution has nothing to decompose
    assert tucker_ranks(nn.Conv2d(16, 16, 3, groups=4), 0.25) is None  # grouped: left alone
    tiny = nn.Conv2d(4, 4, 3)  # 144 weights; at 0.75: 4*3 + 3*3*9 + 3*4 = 105 saves, at 1.0 nothing changes
    assert tucker_ranks(tiny, 0.75) == (3, 3) and tucker_ranks(tiny, 1.0) is None
    wide_core = nn.Conv2d(2, 2, 3)  # 36 weights; at 0.75: r = 2 each: 4 + 36 + 4 = 44 > 36, left alone
    assert tucker_ranks(wide_core, 0.75) is None
    out = knob.apply(small_cnn, {**knob.identity(), "tucker.features.4": 1.0})
    assert isinstance(out.features[4], nn.Conv2d)  # the identity ratio leaves the layer as it was


def test_size_and_latency_really_change(small_cnn, batch):
    knob = TuckerKnob(model=small_cnn)
    out = knob.apply(small_cnn, {**knob.identity(), "tucker.features.4": 0.25, "tucker.features.8": 0.25})
    n_before = sum(p.numel() for p in small_cnn.parameters())
    n_after = sum(p.numel() for p in out.parameters())
    assert n_after < n_before
    before = spaces.materialize(copy.deepcopy(small_cnn), input_shape=INPUT_SHAPE, calibration=batch.numpy())
    after = spaces.materialize(out, input_shape=INPUT_SHAPE, calibration=batch.numpy())
    assert len(after.packed) < len(before.packed)
    convs = lambda a: sum(n.op_type == "Conv" for n in onnx.load_from_string(a.onnx).graph.node)  # noqa: E731
    assert convs(after) == convs(before) + 4  # two layers, each now three convolutions
    from objectives import count_macs

    assert count_macs(spaces.to_plain(out), INPUT_SHAPE) < count_macs(small_cnn, INPUT_SHAPE)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_a_layer_takes_rank_or_tucker_never_both(small_cnn, ratio):
    from spaces import JointSpace
    from tests.spaces.knob_contract import build_knob

    space = JointSpace([build_knob("rank", small_cnn), build_knob("tucker", small_cnn)])
    assert "factorize.features.4" in space.selectors()
    params = space.with_values(tucker={"tucker.features.4": ratio})
    assert params["factorize.features.4"] == "tucker" and "rank.features.4" not in params
    out = space.apply(small_cnn, params)
    assert len(out.features[4]) == 3
