"""Every cost model passes one contract; the lookup table round-trips, refuses a foreign device and
predicts a toy model's latency within tolerance of its own measurement; a measurement waits for the host lock
and says how long; ExecuTorch's int8 program follows the ONNX model's logits."""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import threading
import time

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from torch import nn

import spaces
from objectives import (
    AnalyticCostModel, BaseCostModel, CudaCostModel, Latency, LatencyTable, LutCostModel, Measurement, OpenVinoCostModel,
    OrtCpuCostModel, _ort, host_lock,
)
from objectives.executorch import ExecuTorchCostModel, executorch_version
from objectives.gpu import cuda_available
from objectives.lut import device_slug, table_path

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


@pytest.fixture(scope="module")
def small() -> spaces.Artifact:
    return artifact_of(4)


@pytest.fixture(scope="module")
def large() -> spaces.Artifact:
    return artifact_of(64)


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


@pytest.fixture(scope="module")
def lut_root(tmp_path_factory, small, large):
    root = tmp_path_factory.mktemp("costmodels")
    build_table(root, [small, large])
    return root


# --------------------------------------------------------------------------- the contract


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


@pytest.fixture(scope="module")
def executorch_model():
    """One ExecuTorch cost model for this module's tests: its exported programs and its timing worker are shared
    (an export takes seconds, a worker's start as long)."""
    try:
        executorch_version()
    except ValueError as exc:
        pytest.skip(str(exc))
    model = ExecuTorchCostModel(batch_size=BATCH, threads=1, warmup=2, repeats=10, settle_s=0)
    yield model
    model.close()


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


# --------------------------------------------------------------------------- ExecuTorch's program


def test_an_int8_executorch_program_gives_logits_close_to_the_onnx_models(executorch_model):
    artifact = artifact_of(8, int8=True)
    # 40 calibration images, not whole batches of 16: the same ranges as ONNX Runtime's 32 (8 of them again)
    artifact = dataclasses.replace(artifact, example=np.concatenate([artifact.example, artifact.example[:8]]))
    files = executorch_model.export(artifact)
    assert set(files) == set(executorch_model.runtime_files) == {"model.pte"}
    images = np.random.default_rng(1).standard_normal((40, *SHAPE[1:]), dtype=np.float32)  # 2.5 program batches
    logits = executorch_model.load(files)(images)
    onnx = _ort.session(artifact.onnx, threads=1).run(None, {"input": images})[0]
    with torch.no_grad():
        float_logits = artifact.module(torch.from_numpy(images)).numpy()
    assert logits.shape == (40, 10) and executorch_model.load(files)(images[:1]).shape == (1, 10)
    int8_error = np.abs(onnx - float_logits).max()
    assert np.abs(logits - float_logits).max() > 0.2 * int8_error  # it really runs int8
    assert np.abs(logits - onnx).max() < 0.5 * int8_error  # and rounds as ONNX Runtime's int8 model does
    assert (logits.argmax(1) == onnx.argmax(1)).mean() >= 0.95


def test_executorch_times_the_program_an_artifact_carries(executorch_model, small):
    carried = dataclasses.replace(small, files=executorch_model.export(small), module=None)  # nothing to export
    assert executorch_model.latency_ms(carried).value_ms > 0


def test_the_end_of_a_search_times_executorch_trials_again_from_the_programs_it_kept(executorch_model, small,
                                                                                    study_maker, tmp_path):
    """``kept_files``: the program ExecuTorch timed (it cannot time the ONNX model, and the PyTorch module is not
    kept), none for a runtime that times the ONNX model; ``remeasure`` times a trial from its kept files and leaves
    out one whose study kept none (searched before the files were kept)."""
    from search.outputs import trials_frame
    from search.pick.remeasure import remeasure, store
    from search.workers.storage import backend

    kept = executorch_model.kept_files(small)
    assert set(kept) == {"model.pte"} and kept == executorch_model.export(small)
    assert OrtCpuCostModel().kept_files(small) == {} and OpenVinoCostModel().kept_files(small) == {}
    study = study_maker(tmp_path, "s", n_trials=0, failed=0)  # the uncompressed model and uniform_int8, no files
    url, artifacts = f"sqlite:///{tmp_path / 's' / 'study.db'}", store(tmp_path / "s")
    storage = backend(url)
    for source, files in zip(study.get_trials(), ({"model.onnx": small.onnx, **kept}, {"model.onnx": small.onnx})):
        # each again, its files uploaded while it runs (as a search does), then finished with its values
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, params=source.params,
                                                  distributions=source.distributions, user_attrs=source.user_attrs))
        trial = study.get_trials()[-1]
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
            optuna.artifacts.upload_artifact(artifact_store=artifacts, file_path=str(tmp_path / name),
                                             study_or_trial=trial, storage=storage)
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name("s"), trial.number)
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, source.values)
    first = study.get_trials()[2]
    got = remeasure(study, trials_frame(study), storage=url, cost_model=executorch_model, out_dir=tmp_path / "s",
                    input_shape=SHAPE, example=small.example, tolerance={"accuracy": 0.001}, n_val=1000)
    table = pd.read_csv(tmp_path / "s" / "remeasured.csv", keep_default_na=False)
    assert got["remeasured_trials"] == 1 and table["number"].tolist() == [first.number]
    assert (table["latency_remeasured_ms"] > 0).all()


def test_an_int8_layer_xnnpack_cannot_run_int8_is_a_one_line_refusal(executorch_model, small):
    pooled = dataclasses.replace(small, int8_layers=("2",))  # the MaxPool2d: no int8 weights to run
    with pytest.raises(ValueError, match=r"^hardware=executorch: layer '2' \(MaxPool2d\) runs int8.*Conv2d") as err:
        executorch_model.latency_ms(pooled)
    assert "\n" not in str(err.value)


def test_a_missing_executorch_is_a_one_line_error_naming_the_package_and_the_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch", None)  # what `import executorch` meets where it is not installed
    with pytest.raises(ValueError, match=r"'executorch'.*uv sync --extra runtimes") as err:
        ExecuTorchCostModel()
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- the lookup table


def test_table_round_trips_to_disk(tmp_path, lut_root):
    path = next(lut_root.rglob("lut-*.json"))
    table = LatencyTable.load(path)
    table.save(tmp_path / "copy.json")
    again = LatencyTable.load(tmp_path / "copy.json")
    assert again.fingerprint == table.fingerprint and again.entries == table.entries
    assert again.constant_ms == table.constant_ms and again.meta == table.meta
    assert len(table.entries) >= 5 and all(e["ms"] > 0 and e["times"] for e in table.entries.values())


def test_table_predicts_a_toy_model_within_tolerance_of_its_measurement(lut_root, large):
    lut = LutCostModel(table=str(lut_root), batch_size=BATCH, threads=1)
    cpu = OrtCpuCostModel(batch_size=BATCH, threads=1, warmup=5, repeats=30, settle_s=0)
    predicted = lut.latency_ms(large).value_ms
    measured = [cpu.latency_ms(large).value_ms for _ in range(3)]
    assert predicted == pytest.approx(float(np.median(measured)), rel=0.35)


def test_table_sums_its_kernels_and_adds_the_constant(lut_root, large):
    lut = LutCostModel(table=str(lut_root), batch_size=BATCH, threads=1)
    kernels = lut.kernels(large)
    assert kernels and not lut.table.missing(kernels)
    expected = sum(lut.table.entries[k.key]["ms"] for k in kernels) + lut.table.constant_ms
    assert lut.latency_ms(large).value_ms == pytest.approx(expected)


def test_missing_kernels_are_measured_and_added_on_the_tables_device(tmp_path, small):
    build_table(tmp_path, [small])
    lut = LutCostModel(table=str(tmp_path), batch_size=BATCH, threads=1)
    before = len(lut.table.entries)
    other = artifact_of(24)
    missing = lut.table.missing(lut.kernels(other))
    assert missing
    assert lut.latency_ms(other).value_ms > 0
    reloaded = LatencyTable.load(lut.path)
    assert len(reloaded.entries) == before + len({k.key for k in missing})
    assert not reloaded.missing(lut.kernels(other))


def test_a_table_from_another_device_is_used_but_never_extended(tmp_path, small, large):
    table = build_table(tmp_path, [small])
    # the same table, copied to a folder named for another machine, with that machine's fingerprint
    table.fingerprint = {**table.fingerprint, "cpu": "Some Other CPU 9000"}
    foreign = table_path(tmp_path, "some-other-cpu-9000", batch_size=BATCH, threads=1)
    table.save(foreign)
    lut = LutCostModel(table=str(tmp_path), device="some-other-cpu-9000", batch_size=BATCH, threads=1)
    assert not lut.same_device
    assert lut.latency_ms(small).value_ms > 0  # every kernel is in the table: a plain lookup
    with pytest.raises(LookupError, match=r"no entry for \d+ kernel.*Some Other CPU 9000.*search.hardware build"):
        lut.latency_ms(large)
    assert LatencyTable.load(foreign).entries == table.entries  # nothing was added


def test_no_table_is_a_one_line_error_naming_the_device_and_the_command(tmp_path):
    with pytest.raises(ValueError, match=r"hardware.device: no latency table for device 'nowhere'.*search.hardware build") as e:
        LutCostModel(table=str(tmp_path), device="nowhere", batch_size=BATCH, threads=1)
    assert "\n" not in str(e.value)


def test_a_table_built_with_other_settings_is_refused(tmp_path, lut_root):
    table = LatencyTable.load(next(lut_root.rglob("lut-*.json")))
    table.fingerprint = {**table.fingerprint, "threads": 4}  # a file renamed by hand
    table.save(table_path(tmp_path, table.device, batch_size=BATCH, threads=1))
    with pytest.raises(ValueError, match="threads"):
        LutCostModel(table=str(tmp_path), batch_size=BATCH, threads=1)


def test_a_file_that_is_not_a_table_is_refused(tmp_path):
    path = table_path(tmp_path, "x", batch_size=BATCH, threads=1)
    path.parent.mkdir(parents=True)
    path.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a latency table"):
        LutCostModel(table=str(tmp_path), device="x", batch_size=BATCH, threads=1)


def test_device_slugs_are_folder_names():
    assert device_slug("AMD EPYC 7B13 64-Core Processor") == "amd-epyc-7b13-64-core-processor"
    assert device_slug("  ") == "unknown-cpu"


def test_kernel_signatures_see_shapes_and_int8():
    fp32, int8 = artifact_of(8), artifact_of(8, int8=True)
    batch = _ort.example_batch(fp32.example, SHAPE, BATCH)
    k32, k8 = _ort.kernels(fp32.onnx, batch, threads=1), _ort.kernels(int8.onnx, batch, threads=1)
    assert any(k.op.startswith("Q") for k in k8) and not any(k.op.startswith("QLinear") for k in k32)
    wider = _ort.kernels(artifact_of(16).onnx, batch, threads=1)
    assert {k.key for k in k32} != {k.key for k in wider}
    assert all(k.signature["outputs"][0][1][0] == BATCH for k in k32)  # batch dimension as configured


# --------------------------------------------------------------------------- analytic and gpu


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


def test_a_negative_constant_never_predicts_less_than_the_kernels(tmp_path, small):
    table = build_table(tmp_path, [small])
    table.constant_ms = -1e6  # a table calibrated while the machine was busy
    table.save(table_path(tmp_path, table.device, batch_size=BATCH, threads=1))
    lut = LutCostModel(table=str(tmp_path), batch_size=BATCH, threads=1)
    assert lut.latency_ms(small).value_ms == pytest.approx(lut.table.kernel_sum(lut.kernels(small)))


# --------------------------------------------------------------------------- openvino


def test_openvino_ir_round_trips_to_the_onnx_models_logits():
    """export's IR (model.xml + model.bin), loaded back: the float model's logits as ONNX Runtime gives them, the
    int8 one's as OpenVINO gives them for the ONNX model read in memory (its int8 kernels round as ORT's need not)."""
    pytest.importorskip("openvino", reason="hardware=openvino needs the runtimes extra (uv sync --extra runtimes)")
    ov = OpenVinoCostModel(batch_size=BATCH, warmup=1, repeats=3, settle_s=0)
    fp32, int8 = artifact_of(8), artifact_of(8, int8=True)
    files = ov.export(fp32)
    assert sorted(files) == ["model.bin", "model.xml"] and files["model.xml"].startswith(b"<?xml")
    x = fp32.example[:5]  # any batch size: the IR keeps the batch dimension dynamic
    expected = _ort.session(fp32.onnx, threads=1).run(None, {"input": x})[0]
    assert np.abs(ov.load(files)(x) - expected).max() <= 1e-4
    in_memory = ov.compiled(ov.read(int8.onnx))
    assert np.abs(ov.load(ov.export(int8))(x) - in_memory(x)[0]).max() <= 1e-4
    timed = ov.latency_ms(dataclasses.replace(int8, files=ov.export(int8)))  # a bundle's IR, timed as it is
    assert timed.value_ms > 0


def test_openvino_missing_is_a_one_line_error_naming_the_package_and_the_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as where the runtimes extra is not installed
    with pytest.raises(ValueError, match=r"hardware=openvino needs the Python package openvino.*uv sync --extra runtimes") as e:
        OpenVinoCostModel()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, key", [({"precision": "int4"}, "precision"), ({"threads": 0}, "threads")])
def test_openvino_rejects_bad_settings(kwargs, key):
    with pytest.raises(ValueError, match=rf"hardware\.{key}.*{kwargs[key]!r}"):
        OpenVinoCostModel(**kwargs)


# --------------------------------------------------------------------------- the host lock


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


def test_lut_measures_missing_kernels_under_the_lock_and_its_reference_keeps_the_setting(tmp_path, small):
    build_table(tmp_path, [small])
    path = str(tmp_path / "latency.lock")
    lut = LutCostModel(table=str(tmp_path), batch_size=BATCH, threads=1, host_lock=path)
    assert lut.latency_ms(small).waited_s is None  # a lookup
    assert lut.latency_ms(artifact_of(24)).waited_s >= 0  # kernels the table lacked: profiled, under the lock
    assert lut.describe()["neighbours"] == lut.reference().describe()["neighbours"] == f"host lock {path}"


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
