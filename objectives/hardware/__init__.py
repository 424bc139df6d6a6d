"""The hardware cost models (``hardware=`` in the config): how long an artifact takes on a device.

One base class, ``BaseCostModel`` (``latency_ms(artifact) -> Measurement``, ``describe()``, ``reference()``, and
where a runtime has files of its own, ``runtime_files`` / ``export`` / ``load``):

- ``cpu`` (``OrtCpuCostModel``): measured in ONNX Runtime or PyTorch on this CPU, under one protocol of threads,
  warm-up, repeats and settling (``check_protocol``, ``spawn_worker``, ``measure_runs``, which the other measured
  runtimes reuse);
- ``openvino`` (``OpenVinoCostModel``): the same ONNX model in OpenVINO on this CPU; a picked bundle ships its IR
  (``model.xml`` + ``model.bin``);
- ``executorch`` (``ExecuTorchCostModel``): an ExecuTorch program on XNNPACK on this CPU; bundles ship
  ``model.pte``;
- ``gpu`` (``CudaCostModel``): CUDA events;
- ``lut`` (``LutCostModel``): a per-kernel lookup table for a named device (``LatencyTable``);
- ``analytic`` (``AnalyticCostModel``): a roofline estimate, no measurement.

``openvino`` and ``executorch`` need the ``runtimes`` extra. The measuring ones time under ``host_lock``: one
measurement at a time per host. This package imports nothing of the objectives above it.
"""
from ._base import BaseCostModel, Measurement
from ._hostlock import host_lock
from ._ort import cpu_name
from .analytic import AnalyticCostModel
from .cpu import OrtCpuCostModel
from .executorch import ExecuTorchCostModel
from .gpu import CudaCostModel
from .lut import LatencyTable, LutCostModel
from .openvino import OpenVinoCostModel

__all__ = [
    "BaseCostModel", "Measurement", "OrtCpuCostModel", "CudaCostModel", "LutCostModel", "LatencyTable",
    "AnalyticCostModel", "OpenVinoCostModel", "ExecuTorchCostModel", "cpu_name", "host_lock",
]
