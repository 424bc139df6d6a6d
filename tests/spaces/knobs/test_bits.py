"""The bits knob: weights at b bits, affine per output channel."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
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




class TestFloat16BitsKnob(TestBitsKnob):
    """16 = weight-only float16, configured as a user adds it (it is no default choice)."""

    active = 16
    settings = {"choices": [2, 3, 4, 6, 8, 16, 32]}
    bad = [1, 12, 64, "16"]
    min_change = 1e-6  # float16 rounds each weight by at most 2**-11 of it: outputs move in their 4th digit


@pytest.mark.parametrize("choices", [[4, 12, 32], [16, 24]])
def test_a_bit_width_float16_is_not_is_refused_naming_key_value_and_allowed(small_cnn, choices):
    with pytest.raises(ValueError) as err:
        BitsKnob(model=small_cnn, choices=choices)
    msg = str(err.value)
    bad = next(b for b in choices if b not in (4, 16, 32))
    assert "\n" not in msg and "space.knobs.bits.choices" in msg and f"bit-width {bad} " in msg
    assert "allowed: [2, 3, 4, 5, 6, 7, 8, 16, 32]" in msg


def test_float16_weights_are_rounded_to_nearest_and_trained_straight_through(small_cnn):
    knob = BitsKnob(model=small_cnn, choices=(16, 32))
    built = knob.apply(small_cnn, {**knob.identity(), "bits.fc1": 16}).train()
    w = built.fc1.effective_weight()
    assert torch.equal(w.detach(), small_cnn.fc1.weight.detach().half().float())
    assert not torch.equal(w.detach(), small_cnn.fc1.weight.detach())  # rounding did something
    assert knob.describe(small_cnn.fc1, built.fc1) == "16"
    (w * torch.arange(w.numel()).reshape(w.shape)).sum().backward()  # straight through: d(loss)/d(weight) as float
    assert torch.equal(built.fc1.weight.grad, torch.arange(w.numel(), dtype=torch.float32).reshape(w.shape))


def test_8_bit_inputs_leave_a_float16_layer_in_float(small_cnn):
    space = JointSpace([BitsKnob(model=small_cnn, choices=(8, 16, 32)), ActivationBitsKnob(model=small_cnn)])
    out = space.apply(small_cnn, {**space.identity(), "bits.fc1": 16, "abits.fc1": 8, "bits.fc2": 8, "abits.fc2": 8})
    assert out.fc1.act is None and layer_bits(out.fc1) == (16, 32)
    assert int8_layers(out) == ["fc2"]


def test_the_knob_table_row_of_bits_mentions_16():
    doc = Path(__file__).resolve().parents[3] / "docs" / "guides" / "search-space.md"
    row = next(line for line in doc.read_text().splitlines() if line.startswith("| `bits` "))
    assert "16" in row and "float16" in row


@pytest.fixture(scope="module")
def fashion_cnn():
    """A SmallCNN trained for 150 Adam steps on 6,400 Fashion-MNIST images (about 80% accuracy: the accuracy of a
    trained model, so a 0.05-point gap means something), with 2,000 validation images."""
    from search.data import fashion_mnist
    from search.models import SmallCNN

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    splits = fashion_mnist.load(val_size=2000, seed=0, train_size=6400)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        i = torch.randint(0, len(splits.train_x), (64,))
        loss = F.cross_entropy(model(splits.train_x[i]), splits.train_y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return model.eval(), splits.val_x, splits.val_y


def test_float16_weights_halve_their_bytes_and_keep_the_accuracy(fashion_cnn):
    model, x, y = fashion_cnn
    space = JointSpace([BitsKnob(model=model, choices=(8, 16, 32)), ActivationBitsKnob(model=model)])
    layers = ["features.4", "features.8", "fc1"]
    weights = sum(model.get_submodule(f).weight.numel() for f in layers)
    out = {}
    for bits in (32, 16):
        built = space.apply(model, {**space.identity(), **{f"bits.{f}": bits for f in layers},
                                    **{f"abits.{f}": 8 for f in layers}})  # 8-bit inputs: no effect on float16
        artifact = spaces.materialize(built, input_shape=INPUT_SHAPE, calibration=x[:64].numpy())
        with torch.no_grad():
            logits = built(x)
        out[bits] = artifact, logits, float((logits.argmax(1) == y).float().mean())
    (a32, logits32, acc32), (a16, logits16, acc16) = out[32], out[16]
    assert acc32 > 0.7  # trained enough to mean something
    # the packed file: exactly 2 bytes less a weight (4 -> 2), the headers of the same length
    assert len(a32.packed) - len(a16.packed) == 2 * weights
    # model.onnx: the float16 initializers hold 2 bytes a weight, less about 100 bytes a layer for its Cast node
    assert 2 * weights - 200 * len(layers) < len(a32.onnx) - len(a16.onnx) <= 2 * weights
    assert a16.int8_layers == a32.int8_layers == ()
    assert abs(acc16 - acc32) <= 0.0005  # within 0.05 points of accuracy
    assert (logits16 - logits32).abs().max() < 1e-2 * logits32.abs().max()
    decoded = spaces.unpack(a16.packed)
    for f in layers:
        stored = decoded[f"{f}.weight"]
        assert torch.equal(stored, stored.half().float())  # float16 values, bit for bit
    import onnxruntime as ort

    session = ort.InferenceSession(a16.onnx, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x[:256].numpy()})[0]
    np.testing.assert_allclose(got, logits16[:256].numpy(), rtol=0, atol=1e-4 * float(logits16.abs().max()))
    print(f"float16 on {layers} ({weights} weights): packed {len(a32.packed)} -> {len(a16.packed)} bytes, "
          f"model.onnx {len(a32.onnx)} -> {len(a16.onnx)}, accuracy {acc32:.4f} -> {acc16:.4f}")
