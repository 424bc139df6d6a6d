"""How a model or its artifact is measured: the objectives and the hardware cost models.

Objectives (``objectives=[accuracy,size_bytes,latency_ms]`` in the config), one base class, ``BaseObjective``;
every module of this package is imported here, so a new objective is one new file whose class registers itself
by its ``name``. Cost models (``hardware=``), one base class, ``BaseCostModel``: ``cpu`` (``OrtCpuCostModel``,
measured in ONNX Runtime or PyTorch on this CPU), ``openvino`` (``OpenVinoCostModel``, the same ONNX model in
OpenVINO on this CPU, under ``cpu``'s protocol; a picked bundle ships its IR, ``model.xml`` + ``model.bin``, through
``BaseCostModel.runtime_files`` / ``export`` / ``load``), ``gpu`` (``CudaCostModel``, CUDA events), ``lut``
(``LutCostModel``, a per-kernel lookup table for a named device), ``analytic`` (``AnalyticCostModel``, a
roofline estimate, no measurement) and ``executorch`` (``ExecuTorchCostModel``, an ExecuTorch program on XNNPACK,
measured on this CPU; its bundles ship ``model.pte``). ``openvino`` and ``executorch`` need the ``runtimes`` extra.
The measuring ones time under ``host_lock``: one measurement at a time per host.
"""
import importlib
import pkgutil

from ._base import BaseCostModel, BaseObjective, Measurement, Outcome, build, objective_class
from ._hostlock import host_lock
from ._ort import cpu_name
from .accuracy import Accuracy
from .analytic import AnalyticCostModel
from .cpu import OrtCpuCostModel
from .gpu import CudaCostModel
from .latency import Latency
from .lut import LatencyTable, LutCostModel
from .openvino import OpenVinoCostModel
from .profile import count_macs, count_params
from .size import ArtifactSize

__all__ = [
    "BaseObjective", "BaseCostModel", "Measurement", "Outcome", "build", "objective_class", "Accuracy",
    "ArtifactSize", "Latency", "OrtCpuCostModel", "CudaCostModel", "LutCostModel", "LatencyTable",
    "AnalyticCostModel", "OpenVinoCostModel", "count_macs", "count_params", "cpu_name", "host_lock",
]

for _info in pkgutil.iter_modules(__path__):  # objectives added as one file register themselves on import
    if not _info.name.startswith("_"):
        _module = importlib.import_module(f"{__name__}.{_info.name}")
        for _name in getattr(_module, "__all__", ()):
            if _name not in __all__:
                globals()[_name] = getattr(_module, _name)
                __all__.append(_name)
