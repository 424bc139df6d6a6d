"""The analytic cost model follows the roofline: narrow layers fill part of the vector width, activations fuse,
int8 regions pay their own bandwidth; a bad device description is one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import spaces
from objectives.hardware import (
    AnalyticCostModel,
)
from tests.objectives.hardware.cost_model_contract import BATCH, SHAPE, artifact_of, toy


def test_analytic_estimate_follows_the_roofline():
    cm = AnalyticCostModel(device="d", peak_tops={"fp32": 0.1, "int8": 0.4}, memory_gbs=1000.0, batch_size=BATCH)
    layers = {layer["op"]: layer for layer in cm.layers(artifact_of(8).onnx)}
    conv = [layer for layer in cm.layers(artifact_of(8).onnx) if layer["op"] == "Conv"][1]
    assert conv["ops"] == 2 * BATCH * 8 * 16 * 16 // 4 * 8 * 9  # 2 x out elements x (in/groups x 3 x 3)
    assert conv["us"] == pytest.approx(conv["ops"] / 0.1e12 * 1e6)  # compute bound at this bandwidth
    assert "Gemm" in layers or "MatMul" in layers
    fp32, int8 = cm.latency_ms(artifact_of(8)).value_ms, cm.latency_ms(artifact_of(8, int8=True)).value_ms
    assert int8 < fp32  # the same shapes at 4x the peak


@pytest.mark.parametrize("kwargs, key", [
    ({"peak_tops": {}}, "peak_tops"), ({"peak_tops": {"fp32": -1}}, "peak_tops"),
    ({"peak_tops": {"fp32": 1, "fp4": 2}}, "peak_tops"), ({"memory_gbs": 0}, "memory_gbs"),
    ({"float_precision": "fp16"}, "float_precision"), ({"batch_size": 0}, "batch_size"),
])
def test_analytic_rejects_a_bad_device_description(kwargs, key):
    base = {"device": "d", "peak_tops": {"fp32": 1.0}, "memory_gbs": 10.0}
    with pytest.raises(ValueError, match=key):
        AnalyticCostModel(**{**base, **kwargs})


def test_analytic_narrow_layers_fill_part_of_the_vector_width_and_activations_fuse():
    base = dict(device="d", peak_tops={"fp32": 0.1}, memory_gbs=1e6, batch_size=BATCH)
    onnx_bytes = artifact_of(8).onnx  # 8 output channels in both convolutions
    wide = AnalyticCostModel(**base).layers(onnx_bytes)
    narrow = AnalyticCostModel(**base, lanes={"fp32": 32}).layers(onnx_bytes)
    for w, n in zip(wide, narrow):
        if w["op"] == "Conv":
            assert n["us"] == pytest.approx(4 * w["us"])  # 8 of 32 lanes busy
    relu = [layer for layer in wide if layer["op"] == "Relu"]
    assert relu and all(layer["us"] == 0 for layer in relu)  # fused into the convolution before it
    assert AnalyticCostModel(**base, base_us=500).latency_ms(artifact_of(8)).value_ms == pytest.approx(
        AnalyticCostModel(**base).latency_ms(artifact_of(8)).value_ms + 0.5)


def test_analytic_float16_weights_cost_what_float32_ones_do():
    """ONNX Runtime folds the Cast of a float16 weight when the session starts and runs the float kernel."""
    model = toy(8)
    knob = spaces.BitsKnob(model=model, choices=[16, 32])
    half = spaces.materialize(knob.apply(model, knob.uniform(16)).eval(), input_shape=SHAPE,
                              calibration=np.zeros((4, *SHAPE[1:]), dtype=np.float32))
    cm = AnalyticCostModel(device="d", peak_tops={"fp32": 0.1}, memory_gbs=10.0, batch_size=BATCH)
    assert [layer["op"] for layer in cm.layers(half.onnx)].count("Cast") == 3
    assert cm.latency_ms(half).value_ms == pytest.approx(cm.latency_ms(artifact_of(8)).value_ms)


def test_analytic_charges_an_int8_pool_that_starts_an_int8_region_at_its_own_bandwidth():
    model = toy(8)
    space = spaces.JointSpace([spaces.BitsKnob(model=model, choices=[8, 32]), spaces.ActivationBitsKnob(model=model)])
    params = space.identity()
    params.update({"bits.3": 8, "abits.3": 8})  # only the second convolution int8: the pool before it enters int8
    q = space.apply(model, params)
    calibration = np.random.default_rng(0).standard_normal((32, *SHAPE[1:]), dtype=np.float32)
    spaces.calibrate(q, [torch.from_numpy(calibration)])
    onnx_bytes = spaces.materialize(q.eval(), input_shape=SHAPE, calibration=calibration).onnx
    base = dict(device="d", peak_tops={"fp32": 0.1, "int8": 0.4}, memory_gbs=10.0, batch_size=BATCH)
    pools = [layer for layer in AnalyticCostModel(**base).layers(onnx_bytes) if layer["op"] == "MaxPool"]
    assert [p["precision"] for p in pools] == ["int8_entry"]
    slow = AnalyticCostModel(**base, op_memory_gbs={"MaxPool.int8_entry": 1.0}).layers(onnx_bytes)
    assert [p["us"] for p in slow if p["op"] == "MaxPool"][0] == pytest.approx(10 * pools[0]["us"])
