"""Each knob really does what it is asked: zeros, removed channels, bit-widths, ranks, folding."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spaces
from spaces import ChannelKnob, JointSpace, BitsKnob, ActivationBitsKnob, RankKnob, SparsityKnob
from spaces._compressed import ActFakeQuant, layer_bits
from spaces.materialize import int8_layers

INPUT_SHAPE = (1, 1, 28, 28)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Effective (masked, quantized) weight of every Conv2d/Linear, via the plain model."""
    plain = spaces.to_plain(model)
    return {n: m.weight.detach() for n, m in plain.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


# --------------------------------------------------------------------------- sparsity


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


# --------------------------------------------------------------------------- channels


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


# --------------------------------------------------------------------------- bits


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


# --------------------------------------------------------------------------- rank


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


# --------------------------------------------------------------------------- folding


@pytest.mark.parametrize("name", ["small_cnn", "resnet8"])
def test_conv_bn_folding_keeps_outputs(request, name, batch):
    model = request.getfixturevalue(name)
    with torch.no_grad():
        expected = model(batch)
    folded = spaces.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not folded.training
    with torch.no_grad():
        got = folded(batch)
    assert (expected.abs().max()) > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


class SharedConv(nn.Module):
    """The conv's output feeds the BN and the residual: it must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_folding_skips_a_conv_whose_output_is_also_used_elsewhere(batch):
    model = SharedConv()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    model.eval()
    folded = spaces.fold_batchnorm(model)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(folded(batch), model(batch), atol=1e-6, rtol=0)


def test_sparsity_survives_conv_bn_folding_in_a_joint_space(small_cnn):
    space = JointSpace([SparsityKnob(model=small_cnn), BitsKnob(model=small_cnn), ActivationBitsKnob(model=small_cnn)])
    out = space.apply(small_cnn, space.with_values(sparsity={"sparsity.features.4": 0.5}))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in out.modules())
    w = _weights(out)["features.4"]
    assert int((w == 0).sum()) == math.floor(0.5 * w.numel())
    # folding rescaled the kept weights (per output channel), it did not zero any more of them
    folded = spaces.fold_batchnorm(small_cnn).features[4].weight.detach()
    kept = w != 0
    assert torch.equal(w[kept], folded[kept])
