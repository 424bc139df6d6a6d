"""How a model or its artifact is measured: the objectives, and below them the hardware cost models
(``objectives.hardware``).

Objectives (``objectives=[accuracy,size_bytes,latency_ms]`` in the config), one base class, ``BaseObjective``;
every module of this package is imported here, so a new objective is one new file whose class registers itself
by its ``name``. The latency objective reads the study's cost model (``hardware=``, ``objectives.hardware``:
``BaseCostModel`` and its implementations), whose names are re-exported here too, so a config that names
``objectives.OrtCpuCostModel`` builds the same cost model as ``objectives.hardware.OrtCpuCostModel``.
"""
import importlib
import pkgutil

from ._base import BaseObjective, Outcome, build, objective_class
from .accuracy import Accuracy
from .hardware import (
    AnalyticCostModel, BaseCostModel, CudaCostModel, ExecuTorchCostModel, LatencyTable, LutCostModel, Measurement,
    OpenVinoCostModel, OrtCpuCostModel, cpu_name, host_lock,
)
from .latency import Latency
from .profile import count_macs, count_params
from .size import ArtifactSize

__all__ = [
    "BaseObjective", "Outcome", "build", "objective_class", "Accuracy", "ArtifactSize", "Latency", "count_macs",
    "count_params",
    # the cost models, from objectives.hardware
    "BaseCostModel", "Measurement", "OrtCpuCostModel", "CudaCostModel", "LutCostModel", "LatencyTable",
    "AnalyticCostModel", "OpenVinoCostModel", "ExecuTorchCostModel", "cpu_name", "host_lock",
]

for _info in pkgutil.iter_modules(__path__):  # objectives added as one file register themselves on import
    if not _info.name.startswith("_") and not _info.ispkg:
        _module = importlib.import_module(f"{__name__}.{_info.name}")
        for _name in getattr(_module, "__all__", ()):
            if _name not in __all__:
                globals()[_name] = getattr(_module, _name)
                __all__.append(_name)
