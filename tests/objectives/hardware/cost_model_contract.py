"""The contract every cost model passes (``CostModelContract``: subclass it once per cost model, in
``test_cost_models.py``), and the toy artifacts the cost-model tests time."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import spaces
from objectives.hardware import (
    BaseCostModel,
    LatencyTable,
    Measurement,
    OrtCpuCostModel,
    _ort,
)
from objectives.hardware.lut import table_path

BATCH = 16
SHAPE = (1, 1, 16, 16)


def toy(width: int) -> nn.Module:
    torch.manual_seed(width)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 8 * 8, 10),
    ).eval()


def artifact_of(width: int, int8: bool = False) -> spaces.Artifact:
    model = toy(width)
    calibration = np.random.default_rng(0).standard_normal((32, *SHAPE[1:]), dtype=np.float32)
    if int8:
        space = spaces.JointSpace([spaces.BitsKnob(model=model, choices=[8, 32]), spaces.ActivationBitsKnob(model=model)])
        model = space.apply(model, space.with_values(bits=space["bits"].uniform(8), abits=space["abits"].uniform(8)))
        spaces.calibrate(model, [torch.from_numpy(calibration)])
    return spaces.materialize(model.eval(), input_shape=SHAPE, calibration=calibration)


def build_table(root, artifacts, *, threads: int = 1) -> LatencyTable:
    """A table from profiled runs of ``artifacts`` (what ``python -m search.hardware build`` does per configuration)."""
    table = LatencyTable(_ort.fingerprint(threads=threads, batch_size=BATCH), meta={"built": "test"})
    residuals = []
    cpu = OrtCpuCostModel(batch_size=BATCH, threads=threads, warmup=3, repeats=15, settle_s=0)
    for a in artifacts:
        batch = _ort.example_batch(a.example, a.input_shape, BATCH)
        profile = _ort.profile(_ort.optimized(a.onnx, threads=threads), batch, threads=threads, warmup=3, repeats=15)
        table.add(profile)
        residuals.append(cpu.latency_ms(a).value_ms - table.kernel_sum(profile.kernels))
    table.constant_ms = float(np.median(residuals))
    table.save(table_path(root, table.device, batch_size=BATCH, threads=threads))
    return table


class CostModelContract:
    """What every cost model honours; one subclass per cost model (and per runtime setting worth covering)
    implements ``make(lut_root)``."""

    def make(self, lut_root) -> BaseCostModel:
        raise NotImplementedError

    @pytest.fixture
    def cost_model(self, lut_root) -> BaseCostModel:
        model = self.make(lut_root)
        yield model
        if hasattr(model, "close"):
            model.close()

    def test_latency_is_a_positive_finite_measurement(self, cost_model, small, large):
        for a in (small, large):
            m = cost_model.latency_ms(a)
            assert isinstance(m, Measurement)
            assert math.isfinite(m.value_ms) and m.value_ms > 0
            assert math.isfinite(m.spread_ms) and m.spread_ms >= 0

    def test_a_16x_wider_model_costs_more(self, cost_model, small, large):
        # 4 vs 64 channels: about 250x the multiply-accumulates in the second convolution
        assert cost_model.latency_ms(large).value_ms > 1.5 * cost_model.latency_ms(small).value_ms

    def test_measure_many_gives_one_reading_per_artifact(self, cost_model, small, large):
        both = cost_model.measure_many([small, large])
        assert len(both) == 2 and both[1].value_ms > both[0].value_ms > 0

    def test_quick_is_the_same_cost_model_with_a_short_protocol(self, cost_model, large):
        quick = cost_model.quick(warmup=1, repeats=3)
        assert isinstance(quick, type(cost_model)) and quick.describe()["cost_model"] == cost_model.name
        assert quick.latency_ms(large).value_ms > 0
        assert (quick is cost_model) == (not cost_model.measures)

    def test_describe_is_json_and_names_the_model_and_device(self, cost_model):
        d = cost_model.describe()
        json.dumps(d)
        assert d["cost_model"] == cost_model.name and isinstance(d["device"], str) and d["device"]

    def test_reference_measures_on_a_real_runtime(self, cost_model, small):
        ref = cost_model.reference()
        assert isinstance(ref, BaseCostModel) and ref.measures
        assert (ref is cost_model) == cost_model.measures
        assert ref.latency_ms(small).value_ms > 0

    def test_a_measurement_says_whether_it_waited_for_the_host_lock(self, cost_model, small):
        m, described = cost_model.latency_ms(small), cost_model.describe()
        if cost_model.measures:  # the default: the host's shared lock file
            assert m.waited_s is not None and m.waited_s >= 0
            assert described["neighbours"].startswith("host lock ")
        else:  # a lookup takes no lock (the table has every kernel of ``small``)
            assert m.waited_s is None

    def test_predictors_are_deterministic(self, cost_model, large):
        if cost_model.measures:
            pytest.skip("a measurement varies from run to run")
        assert cost_model.latency_ms(large).value_ms == cost_model.latency_ms(large).value_ms
