"""How a model or its artifact is measured: accuracy, size, latency and the hardware cost models.

Cost models (``hardware=`` in Hydra), one base class, ``BaseCostModel``:
``cpu`` (``OrtCpuCostModel``, measured in ONNX Runtime or PyTorch on this CPU), ``gpu``
(``CudaCostModel``, CUDA events), ``lut`` (``LutCostModel``, a per-kernel lookup table for a named
device) and ``analytic`` (``AnalyticCostModel``, a roofline estimate, no measurement).
"""
from ._base import BaseCostModel, BaseObjective, Measurement
from .accuracy import Accuracy
from .analytic import AnalyticCostModel
from .gpu import CudaCostModel
from .latency import Latency, OrtCpuCostModel, cpu_name
from .lut import LatencyTable, LutCostModel
from .profile import count_macs, count_params
from .size import ArtifactSize

__all__ = [
    "BaseObjective", "BaseCostModel", "Measurement", "Accuracy", "ArtifactSize", "Latency",
    "OrtCpuCostModel", "CudaCostModel", "LutCostModel", "LatencyTable", "AnalyticCostModel",
    "count_macs", "count_params", "cpu_name",
]
