"""The packed weights file: its size is hand-computable and it decodes to the plain model bit-exactly.

Layout (spaces/packing.py): b"CPZ1" + u32 header length + JSON header + payloads; float tensors are
4 bytes per kept value (float16 ones 2); quantized weights are 4-byte scale + 1-byte zero point per output channel,
then the kept codes at ``bits`` bits; sparse weights first say which are kept, by bitmask (n bits)
or by index (ceil(log2 n) bits each), whichever is smaller.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import spaces
from objectives import ArtifactSize, Outcome
from spaces import JointSpace, BitsKnob, ActivationBitsKnob, RankKnob, SparsityKnob
from spaces.materialize import packed_tensors
from spaces.packing import MAGIC, PackedTensor, pack, unpack


class Net(nn.Module):
    """One Linear layer named ``fc``, so tensors are ``fc.weight`` and ``fc.bias``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _compress(model: nn.Module, *, sparsity: float = 0.0, bits: int = 32, abits: int = 32) -> nn.Module:
    space = JointSpace([SparsityKnob(model=model), BitsKnob(model=model, choices=(2, 3, 4, 8, 16, 32)), ActivationBitsKnob(model=model)])
    return space.apply(model, {"sparsity.fc": sparsity, "bits.fc": bits, "abits.fc": abits})


def _materialize(model: nn.Module) -> spaces.Artifact:
    n_in = model.fc.in_features
    calibration = np.random.default_rng(0).standard_normal((16, n_in), dtype=np.float32)
    return spaces.materialize(model, input_shape=(1, n_in), calibration=calibration)


def _split(packed: bytes) -> tuple[int, list[dict]]:
    assert packed[:4] == MAGIC
    (header_len,) = struct.unpack("<I", packed[4:8])
    return header_len, json.loads(packed[8 : 8 + header_len])


def _check_size(model: nn.Module, payload: int, header: list[dict], tmp_path: Path) -> bytes:
    artifact = _materialize(model)
    packed = artifact.packed
    header_len, got_header = _split(packed)
    assert got_header == header
    assert len(packed) == 8 + header_len + payload
    path = tmp_path / "model.cpz"
    path.write_bytes(packed)
    assert path.stat().st_size == 8 + header_len + payload
    assert ArtifactSize()(Outcome(model, artifact)) == float(8 + header_len + payload)
    _assert_unpacks_to_plain(packed, model)
    return packed


def _assert_unpacks_to_plain(packed: bytes, model: nn.Module) -> None:
    plain = spaces.to_plain(model).state_dict()
    got = unpack(packed)
    extra = set(got) - set(plain)
    assert all(k.endswith((".act.lo", ".act.hi")) for k in extra), extra  # activation ranges ride along
    missing = {k for k in plain if not k.endswith("num_batches_tracked")} - set(got)
    assert not missing, missing
    for key in plain:
        if key in got:
            assert got[key].dtype == torch.float32
            assert torch.equal(got[key], plain[key].float()), key


def test_float_dense_linear(tmp_path):
    model = Net(4, 3).eval()
    header = [
        {"n": "fc.weight", "s": [3, 4], "b": 32, "e": "dense"},
        {"n": "fc.bias", "s": [3], "b": 32, "e": "dense"},
    ]
    _check_size(model, 12 * 4 + 3 * 4, header, tmp_path)


def test_4bit_dense_linear(tmp_path):
    model = _compress(Net(4, 3).eval(), bits=4)
    payload = math.ceil(12 * 4 / 8) + 3 * 4 + 3  # codes + float32 scales + uint8 zero points
    payload += 3 * 4  # float bias
    header = [
        {"n": "fc.weight", "s": [3, 4], "b": 4, "e": "dense"},
        {"n": "fc.bias", "s": [3], "b": 32, "e": "dense"},
    ]
    _check_size(model, payload, header, tmp_path)


def test_float16_dense_linear_is_2_bytes_a_weight(tmp_path):
    model = _compress(Net(4, 3).eval(), bits=16)
    header = [
        {"n": "fc.weight", "s": [3, 4], "b": 16, "e": "dense"},
        {"n": "fc.bias", "s": [3], "b": 32, "e": "dense"},
    ]
    packed = _check_size(model, 12 * 2 + 3 * 4, header, tmp_path)  # float16 weights, float32 bias
    _, head = _split(packed)
    start = 8 + len(json.dumps(head, separators=(",", ":")))
    stored = np.frombuffer(packed[start : start + 24], "<f2").reshape(3, 4)
    assert np.array_equal(stored, model.fc.weight.detach().numpy().astype(np.float16))  # rounded to nearest


def test_float16_with_8_bit_inputs_stays_float_and_stores_no_range(tmp_path):
    model = _compress(Net(4, 3).eval(), bits=16, abits=8)  # not an int8 form: abits leaves the layer alone
    assert model.fc.act is None and _materialize(model).int8_layers == ()
    header = [{"n": "fc.weight", "s": [3, 4], "b": 16, "e": "dense"}, {"n": "fc.bias", "s": [3], "b": 32, "e": "dense"}]
    _check_size(model, 12 * 2 + 3 * 4, header, tmp_path)


def test_sparse_bitmask_float16(tmp_path):
    model = _compress(Net(16, 4).eval(), sparsity=0.5, bits=16)  # 64 weights, 32 kept
    payload = 64 // 8 + 32 * 2 + 4 * 4  # mask bits, two bytes per kept weight, float32 bias
    header = [
        {"n": "fc.weight", "s": [4, 16], "b": 16, "e": "bitmask"},
        {"n": "fc.bias", "s": [4], "b": 32, "e": "dense"},
    ]
    _check_size(model, payload, header, tmp_path)


def test_float16_beyond_its_range_is_stored_as_its_largest_value():
    w = torch.tensor([[1e5, -1e5, 65504.0, 1e-8, 0.1]])
    q = spaces.Float16Quantizer()(w)
    assert q.tolist()[0][:3] == [65504.0, -65504.0, 65504.0] and q[0, 3] == float(np.float16(1e-8))
    got = unpack(pack([spaces.Float16Quantizer().packed("w", w, None)]))["w"]
    assert torch.equal(got, q) and float(q[0, 4]) == float(np.float16(0.1)) != 0.1


def test_int8_layer_also_stores_its_activation_range(tmp_path):
    model = _compress(Net(4, 3).eval(), bits=8, abits=8)
    spaces.calibrate(model, [torch.randn(16, 4)])
    payload = 12 + 3 * 4 + 3 + 3 * 4 + 4 + 4  # 8-bit codes, scales, zero points, bias, act lo, act hi
    header = [
        {"n": "fc.weight", "s": [3, 4], "b": 8, "e": "dense"},
        {"n": "fc.bias", "s": [3], "b": 32, "e": "dense"},
        {"n": "fc.act.lo", "s": [], "b": 32, "e": "dense"},
        {"n": "fc.act.hi", "s": [], "b": 32, "e": "dense"},
    ]
    packed = _check_size(model, payload, header, tmp_path)
    got = unpack(packed)
    assert float(got["fc.act.lo"]) == float(model.fc.act.lo) < 0 < float(got["fc.act.hi"]) == float(model.fc.act.hi)


def test_sparse_bitmask_8bit(tmp_path):
    model = _compress(Net(16, 4).eval(), sparsity=0.5, bits=8)  # 64 weights, 32 kept
    payload = 64 // 8 + 4 * 4 + 4 + 32  # mask bits, scales, zero points, one byte per kept code
    payload += 4 * 4  # bias
    header = [
        {"n": "fc.weight", "s": [4, 16], "b": 8, "e": "bitmask"},
        {"n": "fc.bias", "s": [4], "b": 32, "e": "dense"},
    ]
    _check_size(model, payload, header, tmp_path)


def test_sparse_index_one_kept_of_4096(tmp_path):
    model = _compress(Net(64, 64).eval(), sparsity=4095 / 4096)  # float weights, 1 kept
    payload = math.ceil(12 / 8) + 4  # one 12-bit index, one float32 value
    payload += 64 * 4  # bias
    header = [
        {"n": "fc.weight", "s": [64, 64], "b": 32, "e": "index", "k": 1},
        {"n": "fc.bias", "s": [64], "b": 32, "e": "dense"},
    ]
    _check_size(model, payload, header, tmp_path)


@pytest.mark.parametrize(
    "n_zero, encoding, mask_bytes",
    [
        (55, "index", math.ceil(9 * 6 / 8)),  # 9 kept at 6 bits: 7 bytes < 8-byte bitmask
        (54, "bitmask", 64 // 8),  # 10 kept: 8 index bytes is not smaller than the bitmask
    ],
)
def test_sparse_encoding_picks_the_smaller(n_zero, encoding, mask_bytes, tmp_path):
    model = _compress(Net(16, 4).eval(), sparsity=n_zero / 64, bits=4)
    kept = 64 - n_zero
    payload = mask_bytes + 4 * 4 + 4 + math.ceil(kept * 4 / 8) + 4 * 4
    head = {"n": "fc.weight", "s": [4, 16], "b": 4, "e": encoding}
    if encoding == "index":
        head["k"] = kept
    _check_size(model, payload, [head, {"n": "fc.bias", "s": [4], "b": 32, "e": "dense"}], tmp_path)


def test_3bit_odd_packing(tmp_path):
    model = _compress(Net(3, 3).eval(), bits=3)  # 9 codes * 3 bits = 27 bits -> 4 bytes
    payload = 4 + 3 * 4 + 3 + 3 * 4
    header = [
        {"n": "fc.weight", "s": [3, 3], "b": 3, "e": "dense"},
        {"n": "fc.bias", "s": [3], "b": 32, "e": "dense"},
    ]
    _check_size(model, payload, header, tmp_path)


def test_3bit_codes_are_packed_lsb_first_byte_for_byte():
    # Rows span [0, 7], so scale = 1 and zero point = 0: the codes are the weights themselves.
    w = torch.tensor([[0.0, 1.0, 7.0], [7.0, 0.0, 1.0], [1.0, 7.0, 0.0]])
    data = pack([PackedTensor("w", w, bits=3)])
    header_len, header = _split(data)
    assert header == [{"n": "w", "s": [3, 3], "b": 3, "e": "dense"}]
    payload = data[8 + header_len :]
    scales, zero_points, codes = payload[:12], payload[12:15], payload[15:]
    assert scales == struct.pack("<3f", 1.0, 1.0, 1.0)
    assert zero_points == bytes(3)
    # codes 0,1,7,7,0,1,1,7,0 at 3 bits each, least significant bit first:
    # bits 000 100 111 111 000 100 100 111 000 (+5 padding) -> bytes 200, 143, 228, 0
    assert codes == bytes([200, 143, 228, 0])
    assert torch.equal(unpack(data)["w"], w)


def test_unpack_reproduces_a_joint_compressed_small_cnn_bit_exactly(small_cnn, batch):
    space = JointSpace([
        spaces.ChannelKnob(model=small_cnn, input_shape=(1, 1, 28, 28)),
        RankKnob(model=small_cnn),
        SparsityKnob(model=small_cnn),
        BitsKnob(model=small_cnn), ActivationBitsKnob(model=small_cnn),
    ])
    params = space.with_values(
        channels={"channels.features.4": 0.25},
        rank={"rank.fc1": 0.25},
        sparsity={"sparsity.features.0": 0.3, "sparsity.features.8": 0.9, "sparsity.fc1": 0.5},
        bits={
            "bits.features.0": 8, "abits.features.0": 8,
            "bits.features.4": 3, "abits.features.4": 32,
            "bits.features.8": 2, "abits.features.8": 8,
            "bits.fc1": 4, "abits.fc1": 8,
            "bits.fc2": 6, "abits.fc2": 32,
        },
    )
    model = space.apply(small_cnn, params)
    spaces.calibrate(model, [batch])
    packed = pack(packed_tensors(model))
    _assert_unpacks_to_plain(packed, model)
    heads = {h["n"]: h for h in _split(packed)[1]}
    assert heads["features.8.weight"]["b"] == 2 and heads["features.8.weight"]["e"] in ("index", "bitmask")
    assert {"fc1.0.weight", "fc1.1.weight"} <= set(heads) and "fc1.weight" not in heads
    assert heads["features.4.weight"]["s"][0] == 12  # 16 channels, a quarter removed
    # and the decoded state dict runs: loaded into the plain model it gives the same logits
    plain = spaces.to_plain(model)
    reference = plain(batch)
    plain.load_state_dict({k: v for k, v in unpack(packed).items() if k in plain.state_dict()}, strict=False)
    assert torch.equal(plain(batch), reference)


def test_empty_tensor_list_packs_to_header_only():
    data = pack([])
    assert data == MAGIC + struct.pack("<I", 2) + b"[]"
    assert unpack(data) == {}


@pytest.mark.parametrize("bad", [b"", b"PK\x03\x04rest", b"CPZ0" + struct.pack("<I", 2) + b"[]"])
def test_wrong_magic_raises_value_error(bad):
    with pytest.raises(ValueError, match="not a packed model file"):
        unpack(bad)


def test_trailing_bytes_raise_value_error():
    data = pack([PackedTensor("w", torch.randn(3, 4), bits=4), PackedTensor("b", torch.randn(3))])
    unpack(data)
    with pytest.raises(ValueError, match="1 trailing bytes"):
        unpack(data + b"\x00")


def test_corrupt_header_raises_value_error():
    data = pack([PackedTensor("w", torch.randn(3, 4))])
    header_len, _ = _split(data)
    broken = data[:8] + b"{" + data[9:]  # header is no longer valid JSON
    with pytest.raises(ValueError):
        unpack(broken)
    assert header_len > 0


@pytest.mark.parametrize("cut", [4, 8])
def test_truncated_file_raises_value_error(cut):
    data = pack([PackedTensor("w", torch.randn(3, 4))])  # 12 float32 values
    with pytest.raises(ValueError):
        unpack(data[:-cut])


def test_file_cut_inside_the_header_length_raises_value_error():
    with pytest.raises(ValueError):
        unpack(MAGIC + b"\x01\x00")
