"""The ONNX model of a materialized artifact: float parity, int8 QDQ only where asked, and
removed channels / factorized layers really absent from the graph."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import spaces
from spaces import ChannelKnob, JointSpace, BitsKnob, ActivationBitsKnob, RankKnob, SparsityKnob
from spaces.materialize import onnx_weights

INPUT_SHAPE = (1, 1, 28, 28)
WEIGHTED = ("Conv", "Gemm", "MatMul")


def _joint(model: nn.Module) -> JointSpace:
    return JointSpace([
        ChannelKnob(model=model, input_shape=INPUT_SHAPE),
        RankKnob(model=model),
        SparsityKnob(model=model),
        BitsKnob(model=model), ActivationBitsKnob(model=model),
    ])


def _run(onnx_bytes: bytes, x: torch.Tensor) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _torch(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


class Graph:
    """The weighted nodes of an ONNX graph by layer fqn, and where each one's weight comes from."""

    def __init__(self, onnx_bytes: bytes) -> None:
        self.graph = onnx.load_from_string(onnx_bytes).graph
        self.init = {i.name: i for i in self.graph.initializer}
        self.producer = {out: n for n in self.graph.node for out in n.output}
        # node names look like "/features/features.4/Conv" or "/fc1/fc1.1/Gemm"
        self.layers = {n.name.split("/")[-2]: n for n in self.graph.node if n.op_type in WEIGHTED}

    def weight(self, fqn: str) -> tuple[bool, onnx.TensorProto]:
        """(quantized?, the stored weight initializer) of layer ``fqn``."""
        name = self.layers[fqn].input[1]
        dq = self.producer.get(name)
        if dq is not None and dq.op_type == "DequantizeLinear":
            return True, self.init[dq.input[0]]
        return False, self.init[name]

    def input_is_dequantized(self, fqn: str) -> bool:
        src = self.producer.get(self.layers[fqn].input[0])
        return src is not None and src.op_type == "DequantizeLinear"

    def ops(self) -> set[str]:
        return {n.op_type for n in self.graph.node}


# --------------------------------------------------------------------------- float


@pytest.mark.parametrize("name", ["small_cnn", "resnet8"])
def test_float_artifact_matches_pytorch(request, name, batch):
    model = request.getfixturevalue(name)
    space = _joint(model)
    compressed = space.apply(model, space.identity())  # BN folded, nothing else
    artifact = spaces.materialize(compressed, input_shape=INPUT_SHAPE, calibration=batch.numpy())
    assert artifact.int8_layers == () and artifact.input_shape == INPUT_SHAPE
    graph = Graph(artifact.onnx)
    assert not graph.ops() & {"QuantizeLinear", "DequantizeLinear", "BatchNormalization"}
    expected = _torch(model, batch)  # the teacher itself, BN unfolded
    np.testing.assert_allclose(_run(artifact.onnx, batch), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(_run(artifact.onnx, batch[:1]), expected[:1], atol=1e-4, rtol=0)  # dynamic batch


def test_simulated_low_bit_weights_are_exported_as_float_effective_weights(small_cnn, batch):
    space = _joint(small_cnn)
    params = space.with_values(
        sparsity={"sparsity.features.4": 0.5},
        bits={"bits.features.4": 4, "abits.features.4": 32, "bits.fc1": 3, "abits.fc1": 32},
    )
    model = space.apply(small_cnn, params)
    artifact = spaces.materialize(model, input_shape=INPUT_SHAPE, calibration=batch.numpy())
    assert artifact.int8_layers == ()  # float activations: no int8 kernel
    np.testing.assert_allclose(_run(artifact.onnx, batch), _torch(model, batch), atol=1e-4, rtol=0)
    graph = Graph(artifact.onnx)
    plain = spaces.to_plain(model)
    for fqn in ("features.4", "fc1"):
        quantized, stored = graph.weight(fqn)
        assert not quantized and stored.data_type == onnx.TensorProto.FLOAT
        w = numpy_helper.to_array(stored)
        assert np.array_equal(w, plain.get_submodule(fqn).weight.detach().numpy())
    w4 = numpy_helper.to_array(graph.weight("features.4")[1])
    assert (w4 == 0).sum() >= w4.size // 2
    assert all(len(np.unique(row)) <= 16 for row in w4.reshape(w4.shape[0], -1))


# --------------------------------------------------------------------------- int8


@pytest.fixture(scope="module")
def int8_case(trained_cnn):
    """The trained SmallCNN with features.4 and fc2 at 8-bit weights and inputs, calibrated."""
    teacher, data = trained_cnn
    space = _joint(teacher)
    chosen = ("features.4", "fc2")
    bits = {}
    for fqn in chosen:
        bits.update({f"bits.{fqn}": 8, f"abits.{fqn}": 8})
    model = space.apply(teacher, space.with_values(bits=bits))
    calibration, _ = data.sample(256, seed=1)
    spaces.calibrate(model, calibration.split(64))
    artifact = spaces.materialize(model, input_shape=INPUT_SHAPE, calibration=calibration.numpy())
    return teacher, model, artifact, chosen, data


def test_int8_layers_are_the_chosen_ones(int8_case):
    _, _, artifact, chosen, _ = int8_case
    assert artifact.int8_layers == chosen


def test_qdq_only_around_the_chosen_layers(int8_case):
    _, model, artifact, chosen, _ = int8_case
    graph = Graph(artifact.onnx)
    assert {"QuantizeLinear", "DequantizeLinear"} <= graph.ops()
    plain = spaces.to_plain(model)
    assert set(graph.layers) == {"features.0", "features.4", "features.8", "fc1", "fc2"}
    for fqn in graph.layers:
        quantized, stored = graph.weight(fqn)
        shape = tuple(plain.get_submodule(fqn).weight.shape)
        assert quantized == (fqn in chosen), fqn
        if fqn in chosen:
            assert stored.data_type == onnx.TensorProto.INT8 and tuple(stored.dims) == shape
            assert graph.input_is_dequantized(fqn), f"{fqn}'s input is not quantized"
        else:
            assert stored.data_type == onnx.TensorProto.FLOAT and tuple(stored.dims) == shape
            assert np.array_equal(numpy_helper.to_array(stored), plain.get_submodule(fqn).weight.detach().numpy())
    assert not graph.input_is_dequantized("features.0")  # the float stem reads the float input
    # no other weight tensor is stored as integers
    int_weights = [
        i.name for i in graph.graph.initializer
        if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(i.dims) > 1
    ]
    assert sorted(int_weights) == sorted(f"{fqn}.weight_quantized" for fqn in chosen)


def test_int8_onnx_agrees_with_the_pytorch_simulation(int8_case):
    teacher, model, artifact, _, data = int8_case
    x, y = data.sample(256, seed=2)
    simulated, onnx_logits = _torch(model, x), _run(artifact.onnx, x)
    assert (simulated.argmax(1) == y.numpy()).mean() >= 0.9  # the model learnt the data
    agreement = (simulated.argmax(1) == onnx_logits.argmax(1)).mean()
    assert agreement >= 0.9, agreement
    scale = np.abs(simulated).max()
    assert np.abs(simulated - onnx_logits).max() <= 0.1 * scale
    # and the int8 model is not just the float one: quantization moved the logits a little
    assert np.abs(_torch(teacher, x) - onnx_logits).max() > 1e-4


def test_uniform_int8_onnx_agrees_with_the_pytorch_simulation(trained_cnn):
    teacher, data = trained_cnn
    space = _joint(teacher)
    model = space.apply(teacher, space.with_values(bits=space["bits"].uniform(8), abits=space["abits"].uniform(8)))
    calibration, _ = data.sample(256, seed=3)
    spaces.calibrate(model, calibration.split(64))
    artifact = spaces.materialize(model, input_shape=INPUT_SHAPE, calibration=calibration.numpy())
    assert set(artifact.int8_layers) == {"features.0", "features.4", "features.8", "fc1", "fc2"}
    graph = Graph(artifact.onnx)
    assert all(graph.weight(fqn)[0] for fqn in graph.layers)
    x, _ = data.sample(256, seed=4)
    simulated, onnx_logits = _torch(model, x), _run(artifact.onnx, x)
    assert (simulated.argmax(1) == onnx_logits.argmax(1)).mean() >= 0.9
    assert np.abs(simulated - onnx_logits).max() <= 0.1 * np.abs(simulated).max()


# --------------------------------------------------------------------------- structure


def test_pruned_channels_and_factorized_layers_are_gone_from_the_graph(small_cnn, batch):
    space = _joint(small_cnn)
    params = space.with_values(
        channels={"channels.features.0": 0.5, "channels.features.8": 0.75},
        rank={"rank.fc1": 0.25, "rank.features.4": 0.25},
    )
    model = space.apply(small_cnn, params)
    artifact = spaces.materialize(model, input_shape=INPUT_SHAPE, calibration=batch.numpy())
    graph = Graph(artifact.onnx)
    shapes = {name: tuple(t.dims) for name, t in graph.init.items()}
    assert shapes["features.0.weight"] == (4, 1, 3, 3)  # 8 -> 4 output channels
    # features.4 (16 x 4 x 3 x 3) at a quarter rank: min(16, 36) / 4 = 4
    assert shapes["features.4.0.weight"] == (4, 4, 3, 3)
    assert shapes["features.4.1.weight"] == (16, 4, 1, 1)
    assert shapes["features.8.weight"] == (8, 16, 3, 3)  # 32 -> 8 output channels
    assert "features.4.weight" not in shapes and "fc1.weight" not in shapes
    # fc1 (32 x 72): rank 8, first factor has no bias
    assert graph.layers["fc1.1"].op_type == "Gemm" and shapes["fc1.1.weight"] == (32, 8)
    first = graph.weight("fc1.0")[1]
    assert sorted(first.dims) == [8, 72]
    conv_shapes = sorted(tuple(graph.weight(f)[1].dims) for f, n in graph.layers.items() if n.op_type == "Conv")
    assert conv_shapes == sorted([(4, 1, 3, 3), (4, 4, 3, 3), (16, 4, 1, 1), (8, 16, 3, 3)])
    np.testing.assert_allclose(_run(artifact.onnx, batch), _torch(model, batch), atol=1e-4, rtol=0)
    # the packed file agrees: no tensor of the teacher's full fc1 or features.4
    names = set(spaces.unpack(artifact.packed))
    assert "fc1.weight" not in names and {"fc1.0.weight", "fc1.1.weight"} <= names
    assert len(artifact.packed) < len(spaces.materialize(
        space.apply(small_cnn, space.identity()), input_shape=INPUT_SHAPE, calibration=batch.numpy()
    ).packed)


def test_every_int8_layer_has_a_quantized_weight_in_onnx(batch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8, bias=False), nn.ReLU(), nn.Linear(8, 4)).eval()
    space = JointSpace([BitsKnob(model=model), ActivationBitsKnob(model=model)])
    q = space.apply(model, space.with_values(bits=space["bits"].uniform(8), abits=space["abits"].uniform(8)))
    x = torch.randn(64, 16)
    spaces.calibrate(q, [x])
    artifact = spaces.materialize(q, input_shape=(1, 16), calibration=x.numpy())
    assert artifact.int8_layers == ("0", "2")
    graph = Graph(artifact.onnx)
    assert set(graph.layers) == {"0", "2"}
    assert all(graph.weight(fqn)[0] for fqn in artifact.int8_layers)


# --------------------------------------------------------------------------- int4 in ONNX (onnx_int4)


@pytest.fixture(scope="module")
def int4_case(trained_cnn):
    """The trained SmallCNN at 4-bit weights and 8-bit inputs everywhere (the 2-bit fc2 below 4), calibrated."""
    teacher, data = trained_cnn
    space = _joint(teacher)
    bits = {**space["bits"].uniform(4), "bits.fc2": 2}
    model = space.apply(teacher, space.with_values(bits=bits, abits=space["abits"].uniform(8)))
    calibration, _ = data.sample(256, seed=5)
    spaces.calibrate(model, calibration.split(64))
    return model, {which: spaces.materialize(model, input_shape=INPUT_SHAPE, calibration=calibration.numpy(),
                                             int4=which) for which in spaces.INT4_CHOICES}, data


def test_4bit_weights_are_stored_at_4_bits_and_pass_the_checker(int4_case):
    from spaces.materialize import onnx_weights

    model, artifacts, data = int4_case
    layers = ("features.0", "features.4", "features.8", "fc1", "fc2")
    assert onnx_weights(artifacts["none"].onnx) == dict.fromkeys(layers, "int8")
    assert onnx_weights(artifacts["linear"].onnx) == {**dict.fromkeys(layers[:3], "int8"), "fc1": "int4", "fc2": "int4"}
    assert onnx_weights(artifacts["all"].onnx) == dict.fromkeys(layers, "int4")
    proto = onnx.load_from_string(artifacts["all"].onnx)
    onnx.checker.check_model(proto, full_check=True)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {21}
    # the file follows the packed size: each 4-bit weight takes half a byte, as in weights.cpz
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1)
    assert len(artifacts["none"].onnx) - len(artifacts["all"].onnx) >= 0.45 * weights
    stored = [i for i in proto.graph.initializer if i.name.endswith(".weight_quantized")]
    assert sum(len(i.raw_data) for i in stored) == sum((int(np.prod(i.dims)) + 1) // 2 for i in stored)
    # and the 4-bit codes are the packed file's: dequantized, they are the layer's effective weight exactly
    graph = Graph(artifacts["all"].onnx)
    for fqn in layers:
        node = graph.producer[graph.layers[fqn].input[1]]
        q, s, z = (numpy_helper.to_array(graph.init[i]) for i in node.input)
        w = (q.astype(np.float32) - z.astype(np.float32).reshape(-1, *[1] * (q.ndim - 1))) * s.reshape(
            -1, *[1] * (q.ndim - 1))
        effective = model.get_submodule(fqn).effective_weight().detach().numpy()
        assert np.allclose(w, effective, rtol=0, atol=1e-6 * np.abs(effective).max()), fqn


def test_4bit_onnx_runs_and_agrees_with_the_pytorch_simulation(int4_case):
    model, artifacts, data = int4_case
    x, _ = data.sample(256, seed=6)
    simulated = _torch(model, x)
    for which in ("linear", "all"):
        onnx_logits = _run(artifacts[which].onnx, x)
        assert (simulated.argmax(1) == onnx_logits.argmax(1)).mean() >= 0.95, which
        # no worse than the int8 file, whose weights only approximate the 4-bit grid
        assert np.abs(simulated - onnx_logits).max() <= np.abs(simulated - _run(artifacts["none"].onnx, x)).max() \
            + 1e-3 * np.abs(simulated).max(), which


def test_an_unknown_int4_setting_is_refused_naming_the_key(int4_case):
    model, _, _ = int4_case
    with pytest.raises(ValueError, match=r"onnx_int4 must be one of \['none', 'linear', 'all'\], got 'some'"):
        spaces.materialize(model, input_shape=INPUT_SHAPE, calibration=np.zeros((4, 1, 28, 28), np.float32),
                           int4="some")


@pytest.mark.parametrize("size", [(6, 6), (7, 3), (None, 5)])
def test_adaptive_pooling_the_onnx_exporter_refuses_is_exported_as_matrix_products(size):
    """torchvision's AlexNet and VGG pool to 6 x 6 and 7 x 7 whatever their input: on small images an output that
    does not divide the input, which PyTorch's ONNX export refuses; exported as the same bins, and the model's own
    forward back afterwards."""
    from spaces.materialize import export_onnx

    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.AdaptiveAvgPool2d(size), nn.Flatten()).eval()
    x = torch.randn(3, 1, 9, 9)  # a 4 x 4 map into the pool
    session = ort.InferenceSession(export_onnx(model, (1, 1, 9, 9)), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5)
    assert "forward" not in vars(model[1])


def _float16(model: nn.Module, params: dict[str, int]) -> nn.Module:
    """``model`` through the joint space of ``bits`` (16 among its choices) and ``abits``, BN folded before the
    weights are quantized; ``params`` over the identity."""
    space = JointSpace([BitsKnob(model=model, choices=(8, 16, 32)), ActivationBitsKnob(model=model)])
    return space.apply(model, {**space.identity(), **params})


def _optimized_ops(onnx_bytes: bytes, tmp_path) -> set[str]:
    """The operators ONNX Runtime runs after its graph optimizations."""
    opts = ort.SessionOptions()
    opts.log_severity_level, opts.optimized_model_filepath = 3, str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}


def test_float16_weights_are_float16_initializers_cast_to_float32(small_cnn, batch, tmp_path):
    built = _float16(small_cnn, {"bits.features.4": 16, "bits.fc1": 16, "abits.fc1": 8, "bits.fc2": 8, "abits.fc2": 8})
    artifact = spaces.materialize(built, input_shape=INPUT_SHAPE, calibration=batch.numpy())
    g, decoded = Graph(artifact.onnx), spaces.unpack(artifact.packed)
    for fqn in ("features.4", "fc1"):
        weight = g.layers[fqn].input[1]
        cast = g.producer[weight]
        assert cast.op_type == "Cast" and cast.input[0] == f"{fqn}.weight_float16"
        stored = g.init[cast.input[0]]
        assert stored.data_type == onnx.TensorProto.FLOAT16 and weight not in g.init
        # the packed file, ONNX and PyTorch hold the same float16 values, bit for bit
        values = numpy_helper.to_array(stored)
        assert np.array_equal(values.astype(np.float32), decoded[f"{fqn}.weight"].numpy())
        assert torch.equal(built.get_submodule(fqn).effective_weight(), decoded[f"{fqn}.weight"])
    assert g.weight("features.8")[1].data_type == onnx.TensorProto.FLOAT  # float32 layers as they were
    assert onnx_weights(artifact.onnx) == {
        "features.4": "float16", "fc1": "float16", "fc2": "int8"}
    assert artifact.int8_layers == ("fc2",)
    y = _torch(built, batch)
    np.testing.assert_allclose(_run(artifact.onnx, batch), y, rtol=0, atol=0.1 * np.abs(y).max())  # fc2 runs int8
    assert "Cast" not in _optimized_ops(artifact.onnx, tmp_path)  # folded when the session starts


def test_float16_onnx_computes_what_pytorch_computes(small_cnn, batch):
    built = _float16(small_cnn, {"bits.features.0": 16, "bits.features.4": 16, "bits.fc1": 16})
    artifact = spaces.materialize(built, input_shape=INPUT_SHAPE, calibration=batch.numpy())
    y = _torch(built, batch)
    np.testing.assert_allclose(_run(artifact.onnx, batch), y, rtol=0, atol=1e-5 * max(1.0, np.abs(y).max()))


def test_float16_matmul_weights_of_a_transformer(vit, tmp_path):
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    plain = spaces.materialize(vit, input_shape=INPUT_SHAPE, calibration=x.numpy())
    knob = BitsKnob(model=vit, choices=(16, 32))
    built = knob.apply(vit, knob.uniform(16))
    artifact = spaces.materialize(built, input_shape=INPUT_SHAPE, calibration=x.numpy())
    stored = onnx_weights(artifact.onnx)
    assert set(stored) == set(knob.layers) and set(stored.values()) == {"float16"}  # MatMul's transposed copies too
    weights = sum(vit.get_submodule(f).weight.numel() for f in knob.layers)
    assert 2 * weights - 2000 < len(plain.onnx) - len(artifact.onnx) <= 2 * weights
    y = _torch(built, x)
    np.testing.assert_allclose(_run(artifact.onnx, x), y, rtol=0, atol=1e-5 * max(1.0, np.abs(y).max()))


def test_a_weight_the_exporter_changed_stays_float32(small_cnn, batch):
    knob = BitsKnob(model=small_cnn, choices=(16, 32))  # alone: BatchNorm not folded, the exporter folds it
    built = knob.apply(small_cnn, {**knob.identity(), "bits.features.4": 16, "bits.fc1": 16})
    artifact = spaces.materialize(built, input_shape=INPUT_SHAPE, calibration=batch.numpy())
    assert onnx_weights(artifact.onnx) == {"fc1": "float16"}
    y = _torch(built, batch)
    np.testing.assert_allclose(_run(artifact.onnx, batch), y, rtol=0, atol=1e-4 * max(1.0, np.abs(y).max()))
