"""OpenVINO's IR round-trips to the ONNX model's logits; a missing package or a bad setting is one line."""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from objectives.hardware import (
    OpenVinoCostModel,
    _ort,
)
from tests.objectives.hardware.cost_model_contract import BATCH, artifact_of


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
