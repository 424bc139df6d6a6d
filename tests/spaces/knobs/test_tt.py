"""The tt knob: a Linear becomes a tensor train of cores (r_{k-1}, n_k, m_k, r_k) from TT-SVD, only where the cores
store fewer weights; the packed file holds exactly the cores, ONNX Runtime runs the contraction, fine-tuning trains
the cores."""
from __future__ import annotations

import math
import struct

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import spaces
from spaces import BaseKnob, JointSpace
from spaces.knobs.tt import TensorTrainKnob, TTLinear, balanced_modes, factorize, tt_modes, tt_ranks, tt_shapes
from spaces.fold import conv_bn_pairs
from spaces.materialize import export_onnx
from tests.spaces.knob_contract import INPUT_SHAPE, KnobContract, build_knob


class TestTensorTrainKnob(KnobContract):
    knob = "tt"
    active = 0.5
    bad = [0.3, 0.0, 2.0, "0.5", True]


def full_shapes(layer: nn.Linear, cores: int = 3) -> list[tuple[int, int, int, int]]:
    out_modes, in_modes = tt_modes(layer, cores)
    ranks = tt_ranks(out_modes, in_modes, 1.0)
    return [(ranks[k], n, m, ranks[k + 1]) for k, (n, m) in enumerate(zip(out_modes, in_modes))]


def test_sizes_split_into_balanced_modes_and_primes_are_left_out(small_cnn):
    assert balanced_modes(288, 3) == (8, 6, 6) and balanced_modes(32, 3) == (4, 4, 2)
    assert balanced_modes(10, 3) is None and balanced_modes(10, 2) == (5, 2) and balanced_modes(13, 2) is None
    assert tt_modes(nn.Linear(288, 32), 3) == ((4, 4, 2), (8, 6, 6))
    assert tt_modes(nn.Linear(64, 10), 3) == ((5, 2), (8, 8))  # 10 has two prime factors: two cores
    assert tt_modes(nn.Linear(64, 13), 3) is None and tt_modes(nn.Conv2d(4, 4, 3), 3) is None
    model = nn.Sequential(nn.Linear(64, 13), nn.ReLU(), nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 64))
    knob = TensorTrainKnob(model=model)
    assert knob.layers == ["4"]
    assert "does not split" in knob.left_out["0"] and "prime" in knob.left_out["2"]
    assert TensorTrainKnob(model=small_cnn).left_out["features.0"] == "not a Linear"


def test_cores_have_the_tt_matrix_shapes_and_store_fewer_weights():
    layer = nn.Linear(288, 32)
    shapes = tt_shapes(layer, 0.25, 3)
    assert shapes == [(1, 4, 8, 8), (8, 4, 6, 3), (3, 2, 6, 1)]  # full ranks 32 and 12, a quarter each
    assert sum(map(math.prod, shapes)) == 868 < 288 * 32
    assert tt_shapes(layer, 1.0, 3) is None  # the identity leaves the layer alone
    assert tt_shapes(nn.Linear(4, 4), 0.5, 3) is None  # (1, 2, 2, 2) + (2, 2, 2, 1): 16 weights, not fewer
    tt = factorize(layer, shapes)
    assert [tuple(c.shape) for c in tt.cores] == shapes and tt.ranks == (1, 8, 3, 1)


def test_full_rank_reproduces_the_layer_and_error_falls_as_the_rank_grows():
    torch.manual_seed(0)
    layer = nn.Linear(96, 64)
    x = torch.randn(16, 96)
    with torch.no_grad():
        torch.testing.assert_close(factorize(layer, full_shapes(layer))(x), layer(x), atol=1e-5, rtol=1e-4)
        seq = torch.randn(2, 7, 96)  # a Linear over a sequence: the leading dimensions are kept
        torch.testing.assert_close(factorize(layer, full_shapes(layer))(seq), layer(seq), atol=1e-5, rtol=1e-4)
        errors = [float((factorize(layer, tt_shapes(layer, r, 3))(x) - layer(x)).norm()) for r in (0.125, 0.25, 0.5)]
    assert errors == sorted(errors, reverse=True) and errors[0] > errors[-1]


def test_packed_file_holds_exactly_the_cores_and_is_smaller(small_cnn, batch):
    knob = build_knob("tt", small_cnn)
    assert knob.layers == ["fc1", "fc2"]
    built = knob.apply(small_cnn, {**knob.identity(), "tt.fc1": 0.25})
    assert isinstance(built.fc1, TTLinear) and isinstance(built.fc2, nn.Linear)
    before = spaces.materialize(small_cnn, input_shape=INPUT_SHAPE, calibration=batch.numpy())
    after = spaces.materialize(built, input_shape=INPUT_SHAPE, calibration=batch.numpy())
    decoded = spaces.unpack(after.packed)
    assert "fc1.weight" not in decoded and decoded["fc1.bias"].shape == (32,)
    for k, core in enumerate(built.fc1.cores):
        assert torch.equal(decoded[f"fc1.cores.{k}"], core.detach())  # float32, exactly what runs
    stored = sum(c.numel() for c in built.fc1.cores)
    assert stored == 868 and payload(before.packed) - payload(after.packed) == 4 * (288 * 32 - stored)
    assert payload(after.packed) == 4 * sum(v.numel() for v in built.state_dict().values() if v.is_floating_point())
    assert len(after.packed) < len(before.packed)


def payload(packed: bytes) -> int:
    """The bytes after the packed file's header: its tensors' values (4 bytes each, all float32 here)."""
    (header,) = struct.unpack("<I", packed[4:8])
    return len(packed) - 8 - header


def test_macs_count_the_contractions():
    from objectives import count_macs

    layer = nn.Linear(288, 32)
    tt = factorize(layer, tt_shapes(layer, 0.25, 3))  # cores (1,4,8,8), (8,4,6,3), (3,2,6,1)
    by_hand = 36 * 4 * 8 * 8 + 4 * 6 * 8 * 6 * 4 * 3 + 16 * 3 * 6 * 2  # done x rest x r m n s, core by core
    assert tt.multiply_accumulates(torch.zeros(1, 288)) == by_hand == 23616
    # 868 weights for 9,216, but more work than the dense layer's 9,216 multiply-accumulates at this size
    assert count_macs(nn.Sequential(tt), (1, 288)) == by_hand > count_macs(nn.Sequential(layer), (1, 288)) == 9216


def test_onnx_runtime_computes_what_the_tt_layers_compute():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 32)).eval()
    knob = TensorTrainKnob(model=model, ratios=[0.5, 1.0])
    built = knob.apply(model, knob.uniform(0.5))
    assert all(isinstance(built[i], TTLinear) for i in (0, 2))
    session = ort.InferenceSession(export_onnx(built, (1, 5, 48)), providers=["CPUExecutionProvider"])
    for shape in ((1, 5, 48), (3, 5, 48)):  # a sequence of tokens; the batch dimension is dynamic
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = built(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_the_cores_are_trained_in_fine_tuning(small_cnn, batch):
    knob = build_knob("tt", small_cnn)
    built = knob.apply(small_cnn, knob.uniform(0.25)).train()
    assert isinstance(built.fc1, TTLinear) and isinstance(built.fc2, TTLinear)
    before = [c.detach().clone() for c in built.fc1.cores]
    opt = torch.optim.SGD(built.parameters(), lr=0.1)
    losses = []
    for _ in range(5):
        loss = built(batch).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(a, c.detach()) for a, c in zip(before, built.fc1.cores))


@pytest.mark.parametrize("override, named", [
    ({"ratios": [0.5, 0.0]}, "0.0"), ({"ratios": [1.5]}, "1.5"), ({"ratios": []}, "[]"), ({"ratios": 0.5}, "0.5"),
    ({"ratios": ["a"]}, "'a'"),
])
def test_bad_ratios_are_one_line_naming_the_key_the_value_and_what_is_allowed(small_cnn, override, named):
    with pytest.raises(ValueError) as err:
        TensorTrainKnob(model=small_cnn, **override)
    msg = str(err.value)
    assert "space.knobs.tt.ratios" in msg and named in msg and "(0, 1]" in msg and "\n" not in msg


def test_bad_cores_are_refused(small_cnn):
    with pytest.raises(ValueError, match=r"space\.knobs\.tt\.cores must be a whole number >= 2, got 1"):
        TensorTrainKnob(model=small_cnn, cores=1)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_a_layer_takes_rank_or_tt_never_both(small_cnn, ratio):
    space = JointSpace([build_knob("rank", small_cnn), build_knob("tt", small_cnn)])
    assert space.selectors()["factorize.fc1"] == ("rank", "tt")
    params = space.with_values(tt={"tt.fc1": ratio})
    assert params["factorize.fc1"] == "tt" and "rank.fc1" not in params
    assert isinstance(space.apply(small_cnn, params).fc1, TTLinear)


def test_conv_bn_folding_still_traces_a_model_with_tt_layers(small_cnn):
    knob = build_knob("tt", small_cnn)
    built = knob.apply(small_cnn, knob.uniform(0.5))
    assert len(conv_bn_pairs(built)) == 3  # torch.fx traces TTLinear: the convolutions' BNs still fold


def test_every_knob_after_it_leaves_a_tt_layer_alone_and_describes_it(small_cnn, batch):
    """Sparsity, bit-widths and input quantization find no Conv2d/Linear in a TT layer: its cores stay float, and
    every knob's column of the model card says so rather than failing."""
    space = JointSpace([build_knob(n, small_cnn) for n in BaseKnob.registry if n != "rank"])
    hardest = {n: space[n].uniform(v) for n, v in (("sparsity", 0.5), ("bits", 4), ("abits", 8))}
    params = space.with_values(tt={"tt.fc1": 0.25, "tt.fc2": 0.5}, channels=space["channels"].uniform(0.25),
                               **hardest)
    built = space.apply(small_cnn, params)
    assert isinstance(built.fc1, TTLinear) and isinstance(built.fc2, TTLinear)
    spaces.calibrate(built, [batch])
    artifact = spaces.materialize(built, input_shape=INPUT_SHAPE, calibration=batch.numpy())
    assert not any(n.startswith("fc") for n in artifact.int8_layers)
    for k in space.knobs:
        for fqn in k.layers:
            assert isinstance(k.describe(small_cnn.get_submodule(fqn), built.get_submodule(fqn)), str)
    assert space["tt"].describe(small_cnn.fc1, built.fc1).startswith("ranks 1-")
