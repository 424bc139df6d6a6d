"""The pow2 knob: per layer every kept weight a signed power of two in a window of 2^(b-1)-1 exponents below the
largest (or zero), rounded in the log domain, trained straight through, stored as the largest exponent plus b-bit
codes, run in ONNX as float with exactly those values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import spaces
from spaces import JointSpace, SparsityKnob
from spaces.knobs.pow2 import Pow2Knob, Pow2Quantizer, exponents, pow2_round
from spaces.materialize import packed_tensors
from spaces.packing import unpack
from tests.spaces.knob_contract import KnobContract, build_knob

INPUT_SHAPE = (1, 1, 28, 28)


class TestPow2Knob(KnobContract):
    knob = "pow2"
    active = 4
    bad = [0, 1, 9, 16, "4", True]


def _is_signed_power_of_two(values: torch.Tensor) -> bool:
    mantissa, _ = np.frexp(values[values != 0].double().numpy())
    return bool(np.all(np.abs(mantissa) == 0.5))


def test_rounding_is_in_the_log_domain_within_a_window_below_the_largest_exponent():
    s = math.sqrt(2)
    # log2|w|: 3 (the largest), 1.49 -> 1, 1.51 -> 2, 0.49 -> 0, -0.51 -> -1
    w = torch.tensor([8.0, 2 * s * 0.99, -2 * s * 1.01, s * 0.99, -(2**-0.51), 0.0])
    q, emax = pow2_round(w, 3)  # 3 bits: exponents 3, 2, 1
    assert float(emax) == 3
    assert q.tolist() == [8.0, 2.0, -4.0, 0.0, 0.0, 0.0]
    q, _ = pow2_round(w, 4)  # 4 bits: exponents 3 .. -3
    assert q.tolist() == [8.0, 2.0, -4.0, 1.0, -0.5, 0.0]
    assert [exponents(b) for b in (2, 3, 4, 5)] == [1, 3, 7, 15]
    assert torch.equal(pow2_round(torch.zeros(3), 4)[0], torch.zeros(3))  # a layer all zero stays so


def test_every_weight_is_a_signed_power_of_two_and_pruned_weights_stay_zero(small_cnn):
    space = JointSpace([SparsityKnob(model=small_cnn), Pow2Knob(model=small_cnn, choices=(3, 5, 32))])
    params = space.with_values(sparsity={"sparsity.fc1": 0.5}, pow2={"pow2.fc1": 3, "pow2.features.4": 5})
    out = space.apply(small_cnn, params)
    plain = spaces.to_plain(out)
    w, kept = plain.fc1.weight.detach(), out.fc1.weight_mask > 0
    assert _is_signed_power_of_two(w) and torch.all(w[~kept] == 0)
    assert len(torch.unique(w[kept].abs()[w[kept] != 0])) <= 3
    conv = plain.features[4].weight.detach()
    assert _is_signed_power_of_two(conv) and len(torch.unique(conv.abs()[conv != 0])) <= 15
    assert getattr(out.features[0], "wq", None) is None  # a layer left at 32 keeps its float weights


def test_packed_size_is_the_largest_exponent_plus_b_bit_codes_and_decodes_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30)).eval()
    out = Pow2Knob(model=model, choices=(4, 32)).apply(model, {"pow2.0": 4})
    packed = spaces.pack(packed_tensors(out))
    header_len = int.from_bytes(packed[4:8], "little")
    # weight: int16 largest exponent + 1200 codes at 4 bits; bias: 30 float32
    assert len(packed) == 8 + header_len + (2 + math.ceil(1200 * 4 / 8)) + 30 * 4
    decoded = unpack(packed)["0.weight"]
    assert torch.equal(decoded, spaces.to_plain(out)[0].weight.detach())
    assert _is_signed_power_of_two(decoded) and bool((decoded != 0).any())


def test_sparse_packed_layer_decodes_exactly_with_signs_zeros_and_tiny_exponents():
    w = torch.tensor([[2.0**-20, -(2.0**-22), 0.0, 3e-7], [-(2.0**-18), 1e-12, 2.0**-19, -0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]])
    q = Pow2Quantizer(4)(w * mask)  # exponents -18 .. -24: 3e-7 rounds to 2^-22, 1e-12 below the window to zero
    decoded = unpack(spaces.pack([Pow2Quantizer(4).packed("w", w * mask, mask)]))["w"]
    assert torch.equal(decoded, q)
    assert q.tolist() == [[2.0**-20, -(2.0**-22), 0.0, 2.0**-22], [-(2.0**-18), 0.0, 0.0, 0.0]]


def test_the_codec_refuses_a_value_that_is_not_a_power_of_two():
    with pytest.raises(ValueError, match="not a signed power of two"):
        spaces.pack([spaces.PackedTensor("w", torch.tensor([0.5, 0.3]), bits=4, codec="pow2")])


def test_fine_tuning_trains_the_float_weights_straight_through():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    q = Pow2Quantizer(4)
    upstream = torch.randn(8, 16)
    (q(layer.weight) * upstream).sum().backward()
    assert torch.equal(layer.weight.grad, upstream)
    with torch.no_grad():  # without a gradient the exact values, as the packed file holds them
        assert torch.equal(q(layer.weight), pow2_round(layer.weight, 4)[0])


def test_a_choice_outside_the_allowed_bits_is_one_line_naming_key_value_and_what_is_allowed(small_cnn):
    with pytest.raises(ValueError) as err:
        Pow2Knob(model=small_cnn, choices=(4, 9))
    assert str(err.value) == ("space.knobs.pow2.choices: bit-width 9 is not supported; "
                              "allowed: [2, 3, 4, 5, 6, 7, 8, 32]")


def test_pow2_shares_the_quantize_phase_with_bits_and_kmeans(small_cnn):
    space = JointSpace([spaces.BitsKnob(model=small_cnn), spaces.KMeansKnob(model=small_cnn),
                        Pow2Knob(model=small_cnn)])
    assert space.exclusive[(spaces.Phase.QUANTIZE, "fc1")] == ("bits", "kmeans", "pow2")


def test_onnx_runs_the_layer_in_float_with_exactly_the_decoded_weights(small_cnn, batch):
    import onnx
    from onnx import numpy_helper

    knob = Pow2Knob(model=small_cnn, choices=(3, 32))
    artifact = spaces.materialize(knob.apply(small_cnn, {**knob.identity(), "pow2.fc1": 3}),
                                  input_shape=INPUT_SHAPE, calibration=batch.numpy())
    graph = onnx.load_from_string(artifact.onnx).graph
    decoded = unpack(artifact.packed)["fc1.weight"].numpy()
    stored = [numpy_helper.to_array(i) for i in graph.initializer]
    assert artifact.int8_layers == ()
    assert {n.op_type for n in graph.node}.isdisjoint({"QuantizeLinear", "DequantizeLinear"})
    assert any(np.array_equal(v, decoded) or np.array_equal(v, decoded.T) for v in stored)
    assert _is_signed_power_of_two(torch.from_numpy(decoded))


def test_the_sensitivity_sweep_covers_it_through_the_knob_api_with_exactly_its_bytes():
    from objectives import Accuracy
    from objectives.hardware import AnalyticCostModel
    from search.sensitivity.sweep import Measurer, Sweep, sweep_table

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 10)).eval()
    x = torch.randn(200, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    space = JointSpace([spaces.BitsKnob(model=model), Pow2Knob(model=model)])
    cost = AnalyticCostModel(device="toy", peak_tops={"fp32": 0.1, "int8": 0.2}, memory_gbs=8.0, batch_size=8)
    measurer = Measurer(teacher=model, space=space, accuracy=Accuracy(images=x, labels=y), calibration=x[:64],
                        input_shape=(1, 20), cost_model=cost, sweep=Sweep(subset=200, latency=False))
    table = sweep_table(measurer, log=lambda _: None)
    rows = table[table["knob"] == "pow2"]
    assert sorted(set(rows["choice"])) == [3, 4, 5, 32] and set(rows["layer"]) == {"0", "2"}
    # layer 0 at 4 bits: 800 float32 weights (3,200 B) become an int16 exponent and 800 codes of 4 bits (402 B);
    # its header entry reads "b":4 for "b":32 (one character less) and adds ,"c":"pow2" (11 more)
    row = rows[(rows["layer"] == "0") & (rows["choice"] == 4)].iloc[0]
    assert row["bytes_saved"] == 3200 - 402 + 1 - 11


def test_a_tt_layer_keeps_float_cores_and_is_described_as_untouched(small_cnn):
    space = JointSpace([build_knob("tt", small_cnn), build_knob("pow2", small_cnn)])
    built = space.apply(small_cnn, space.with_values(tt={"tt.fc1": 0.5}, pow2=space["pow2"].uniform(4)))
    assert not any(hasattr(m, "wq") for m in built.fc1.modules())
    assert space["pow2"].describe(small_cnn.fc1, built.fc1) == ""
    assert space["pow2"].describe(small_cnn.fc2, built.fc2).startswith("±2^[")
    decoded, plain = unpack(spaces.pack(packed_tensors(built))), spaces.to_plain(built).state_dict()
    assert all(torch.equal(decoded[k], v.float()) for k, v in plain.items() if not k.endswith("num_batches_tracked"))
