"""The kmeans knob: per layer 2^b shared values found by k-means, trained by summed gradients, stored as b-bit
indices plus the codebook, run in ONNX as float with exactly those values."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

import spaces
from spaces import JointSpace, SparsityKnob
from spaces.knobs.kmeans import KMeansKnob, KMeansQuantizer, kmeans_1d
from spaces.materialize import packed_tensors
from spaces.packing import unpack
from tests.spaces.knob_contract import KnobContract

INPUT_SHAPE = (1, 1, 28, 28)


class TestKMeansKnob(KnobContract):
    knob = "kmeans"
    active = 3
    bad = [0, 9, 16, "4", True]


def test_kmeans_1d_finds_the_clusters_and_every_value_takes_its_nearest_centroid():
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(300, generator=g) * 0.01 + c for c in (-1.0, 0.0, 2.0, 5.0)])
    centroids, index = kmeans_1d(values, 4)
    assert torch.allclose(centroids, torch.tensor([-1.0, 0.0, 2.0, 5.0]), atol=0.01)
    nearest = (values[:, None] - centroids[None, :]).abs().argmin(1)
    assert torch.equal(index, nearest)
    for k in range(4):  # at convergence each centroid is the mean of its members
        assert abs(float(values[index == k].double().mean()) - float(centroids[k])) < 1e-6


def test_a_layer_holds_at_most_2_to_the_b_values_and_its_pruned_weights_stay_zero(small_cnn):
    space = JointSpace([SparsityKnob(model=small_cnn), KMeansKnob(model=small_cnn, choices=(2, 3, 32))])
    params = space.with_values(sparsity={"sparsity.fc1": 0.5}, kmeans={"kmeans.fc1": 2, "kmeans.features.4": 3})
    out = space.apply(small_cnn, params)
    w = spaces.to_plain(out).fc1.weight.detach()
    kept = out.fc1.weight_mask > 0
    assert len(torch.unique(w[kept])) <= 4 and torch.all(w[~kept] == 0)
    assert int((~kept).sum()) == math.floor(0.5 * w.numel())
    assert len(torch.unique(spaces.to_plain(out).features[4].weight)) <= 8
    assert getattr(out.features[0], "wq", None) is None  # a layer left at 32 keeps its float weights


def test_packed_size_is_the_codebook_plus_b_bit_indices_and_decodes_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30)).eval()
    knob = KMeansKnob(model=model, choices=(3, 32))
    out = knob.apply(model, {"kmeans.0": 3})
    packed = spaces.pack(packed_tensors(out))
    header_len = int.from_bytes(packed[4:8], "little")
    # weight: 2**3 float32 values + 1200 indices at 3 bits; bias: 30 float32
    assert len(packed) == 8 + header_len + (8 * 4 + math.ceil(1200 * 3 / 8)) + 30 * 4
    decoded = unpack(packed)
    assert torch.equal(decoded["0.weight"], spaces.to_plain(out)[0].weight.detach())


def test_fine_tuning_sums_the_gradients_of_the_weights_that_share_a_value():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    q = KMeansQuantizer(layer.weight.detach(), 2)
    upstream = torch.randn(8, 16)
    (q(layer.weight) * upstream).sum().backward()
    expected = torch.zeros(4).index_add_(0, q.index.flatten(), upstream.flatten())
    assert torch.allclose(q.codebook.grad, expected)
    assert layer.weight.grad is None  # the shared values are what trains
    q.before_step()  # the training loop's hook: the summed step at the learning rate / the weights sharing it
    counts = torch.bincount(q.index.flatten(), minlength=4).clamp(min=1).float()
    assert torch.allclose(q.codebook.grad, expected / counts)


def test_onnx_runs_the_layer_in_float_with_exactly_the_shared_values(small_cnn, batch):
    import onnx
    from onnx import numpy_helper

    knob = KMeansKnob(model=small_cnn, choices=(3, 32))
    out = knob.apply(small_cnn, {**knob.identity(), "kmeans.fc1": 3})
    artifact = spaces.materialize(out, input_shape=INPUT_SHAPE, calibration=batch.numpy())
    assert artifact.int8_layers == ()
    graph = onnx.load_from_string(artifact.onnx).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "Gather") for n in graph.node)
    fc1 = next(v for k, v in weights.items() if v.size == out.fc1.weight.numel())
    assert len(np.unique(fc1)) <= 8
    assert set(np.unique(fc1).tolist()) <= set(out.fc1.wq.codebook.detach().numpy().tolist())
