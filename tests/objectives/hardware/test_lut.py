"""The lookup table round-trips, refuses a foreign device or other settings, predicts a toy model's latency within
tolerance of its own measurement and measures the kernels it lacks on its own device."""
from __future__ import annotations

import numpy as np
import pytest

from objectives.hardware import (
    LatencyTable,
    LutCostModel,
    OrtCpuCostModel,
    _ort,
)
from objectives.hardware.lut import device_slug, table_path
from tests.objectives.hardware.cost_model_contract import BATCH, SHAPE, artifact_of, build_table


def test_table_round_trips_to_disk(tmp_path, lut_root):
    path = next(lut_root.rglob("lut-*.json"))
    table = LatencyTable.load(path)
    table.save(tmp_path / "copy.json")
    again = LatencyTable.load(tmp_path / "copy.json")
    assert again.fingerprint == table.fingerprint and again.entries == table.entries
    assert again.constant_ms == table.constant_ms and again.meta == table.meta
    assert len(table.entries) >= 5 and all(e["ms"] > 0 and e["times"] for e in table.entries.values())


def test_table_predicts_a_toy_model_within_tolerance_of_its_measurement(tmp_path, small, large):
    # the table is built between the measurements it is compared with: a session fixture's table, built minutes
    # earlier under another load, read 40% off on a 2-core CI machine
    cpu = OrtCpuCostModel(batch_size=BATCH, threads=1, warmup=5, repeats=30, settle_s=0)
    measured = [cpu.latency_ms(large).value_ms]
    build_table(tmp_path, [small, large])
    measured += [cpu.latency_ms(large).value_ms for _ in range(2)]
    predicted = LutCostModel(table=str(tmp_path), batch_size=BATCH, threads=1).latency_ms(large).value_ms
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


def test_a_negative_constant_never_predicts_less_than_the_kernels(tmp_path, small):
    table = build_table(tmp_path, [small])
    table.constant_ms = -1e6  # a table calibrated while the machine was busy
    table.save(table_path(tmp_path, table.device, batch_size=BATCH, threads=1))
    lut = LutCostModel(table=str(tmp_path), batch_size=BATCH, threads=1)
    assert lut.latency_ms(small).value_ms == pytest.approx(lut.table.kernel_sum(lut.kernels(small)))


def test_lut_measures_missing_kernels_under_the_lock_and_its_reference_keeps_the_setting(tmp_path, small):
    build_table(tmp_path, [small])
    path = str(tmp_path / "latency.lock")
    lut = LutCostModel(table=str(tmp_path), batch_size=BATCH, threads=1, host_lock=path)
    assert lut.latency_ms(small).waited_s is None  # a lookup
    assert lut.latency_ms(artifact_of(24)).waited_s >= 0  # kernels the table lacked: profiled, under the lock
    assert lut.describe()["neighbours"] == lut.reference().describe()["neighbours"] == f"host lock {path}"
