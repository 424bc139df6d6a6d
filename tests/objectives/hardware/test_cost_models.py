"""Every cost model passes one contract; ONNX Runtime on this CPU times several models interleaved, waits for the
host lock and says how long, and refuses bad settings in one line."""
from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from objectives import Latency
from objectives.hardware import (
    AnalyticCostModel,
    BaseCostModel,
    CudaCostModel,
    LutCostModel,
    Measurement,
    OpenVinoCostModel,
    OrtCpuCostModel,
    host_lock,
)
from objectives.hardware.executorch import ExecuTorchCostModel
from objectives.hardware.gpu import cuda_available
from tests.objectives.hardware.cost_model_contract import BATCH, CostModelContract


class TestOrtCpuCostModel(CostModelContract):
    def make(self, lut_root):
        return OrtCpuCostModel(batch_size=BATCH, threads=1, warmup=2, repeats=10, settle_s=0)


class TestOrtCpuCostModelIsolated(CostModelContract):
    def make(self, lut_root):
        return OrtCpuCostModel(batch_size=BATCH, threads=1, warmup=2, repeats=10, settle_s=0, isolate=True)


class TestOrtCpuCostModelTorchRuntime(CostModelContract):
    def make(self, lut_root):
        return OrtCpuCostModel(batch_size=BATCH, threads=1, warmup=2, repeats=10, settle_s=0, runtime="torch")


class TestLutCostModel(CostModelContract):
    def make(self, lut_root):
        return LutCostModel(table=str(lut_root), batch_size=BATCH, threads=1)


class TestAnalyticCostModel(CostModelContract):
    def make(self, lut_root):
        return AnalyticCostModel(device="test CPU", peak_tops={"fp32": 0.1, "int8": 0.3}, memory_gbs=10.0,
                                 overhead_us=2.0, batch_size=BATCH)


class TestCudaCostModel(CostModelContract):
    def make(self, lut_root):
        if not cuda_available()[0]:
            pytest.skip(f"gpu cost model: {cuda_available()[1]}")
        return CudaCostModel(batch_size=BATCH, warmup=3, repeats=10)


class TestOpenVinoCostModel(CostModelContract):
    def make(self, lut_root):
        pytest.importorskip("openvino", reason="hardware=openvino needs the runtimes extra (uv sync --extra runtimes)")
        return OpenVinoCostModel(batch_size=BATCH, threads=1, warmup=2, repeats=10, settle_s=0)


class TestExecuTorchCostModel(CostModelContract):
    @pytest.fixture
    def cost_model(self, executorch_model) -> BaseCostModel:
        return executorch_model


def test_every_cost_model_class_has_a_contract_test():
    names = {c.__name__ for c in CostModelContract.__subclasses__()}
    known = (OrtCpuCostModel, LutCostModel, AnalyticCostModel, CudaCostModel, OpenVinoCostModel, ExecuTorchCostModel)
    for cls in known:
        assert f"Test{cls.__name__}" in names, cls.__name__
    assert set(BaseCostModel.__subclasses__()) | set(OrtCpuCostModel.__subclasses__()) <= set(known)


def test_an_int8_layer_xnnpack_cannot_run_int8_is_a_one_line_refusal(executorch_model, small):
    pooled = dataclasses.replace(small, int8_layers=("2",))  # the MaxPool2d: no int8 weights to run
    with pytest.raises(ValueError, match=r"^hardware=executorch: layer '2' \(MaxPool2d\) runs int8.*Conv2d") as err:
        executorch_model.latency_ms(pooled)
    assert "\n" not in str(err.value)


def test_gpu_without_a_gpu_is_a_clear_error():
    ok, why = cuda_available()
    if ok:
        pytest.skip("a CUDA device is present: the contract tests measure on it")
    with pytest.raises(ValueError, match=r"hardware=gpu: no CUDA device.*hardware=cpu, hardware=lut or hardware=analytic"):
        CudaCostModel()


def test_cpu_measures_several_models_interleaved_in_order(small, large):
    cpu = OrtCpuCostModel(batch_size=BATCH, threads=1, warmup=1, repeats=12, rounds=4, settle_s=0, retries=0)
    a, b, c = cpu.measure_many([small, large, small])
    assert len(a.samples) == len(b.samples) == 12
    assert b.value_ms > a.value_ms and b.value_ms > c.value_ms


@pytest.mark.parametrize("kwargs, key", [({"runtime": "tvm"}, "runtime"), ({"rounds": 0}, "rounds")])
def test_cpu_rejects_bad_settings(kwargs, key):
    with pytest.raises(ValueError, match=key):
        OrtCpuCostModel(**kwargs)


def test_cpu_waits_for_the_host_lock_and_records_the_wait(tmp_path, small):
    path = str(tmp_path / "latency.lock")
    cpu = OrtCpuCostModel(batch_size=BATCH, warmup=1, repeats=3, settle_s=0, retries=0, host_lock=path)
    assert cpu.describe()["neighbours"] == f"host lock {path}"
    assert cpu.quick(warmup=1, repeats=3).describe()["neighbours"] == f"host lock {path}"
    taken = threading.Event()

    def neighbour() -> None:  # another worker timing its own model
        with host_lock(path):
            taken.set()
            time.sleep(0.3)

    t = threading.Thread(target=neighbour)
    t.start()
    taken.wait(timeout=5)
    m = cpu.latency_ms(small)
    t.join()
    assert 0.2 < m.waited_s < 10
    recorded = Latency(cost_model=cpu).attrs(m)
    assert recorded == {"latency_spread_ms": m.spread_ms, "latency_lock_wait_s": round(m.waited_s, 3)}


def test_cpu_without_the_host_lock_says_none(tmp_path, small):
    cpu = OrtCpuCostModel(batch_size=BATCH, warmup=1, repeats=3, settle_s=0, retries=0, host_lock=False)
    m = cpu.latency_ms(small)
    assert m.waited_s is None and cpu.describe()["neighbours"] == "none"
    assert cpu.quick(warmup=1, repeats=3).describe()["neighbours"] == "none"
    assert Latency(cost_model=cpu).attrs(m) == {"latency_spread_ms": m.spread_ms}  # no lock, no wait recorded


def test_a_measurement_built_by_position_still_works():
    m = Measurement(1.0, 0.1, (1.0, 1.1))
    assert (m.value_ms, m.spread_ms, m.samples, m.waited_s) == (1.0, 0.1, (1.0, 1.1), None)


@pytest.mark.parametrize("make", [
    lambda v: OrtCpuCostModel(host_lock=v), lambda v: CudaCostModel(host_lock=v),
    lambda v: LutCostModel(table="nowhere", host_lock=v), lambda v: OpenVinoCostModel(host_lock=v),
], ids=["cpu", "gpu", "lut", "openvino"])
@pytest.mark.parametrize("value", [2, None, "", "/no/such/folder/x.lock"])
def test_a_bad_host_lock_is_a_one_line_error_naming_the_key(make, value):
    with pytest.raises(ValueError, match=r"^hardware\.host_lock") as err:
        make(value)
    assert "\n" not in str(err.value) and repr(value) in str(err.value)
