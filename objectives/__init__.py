"""How a model or its artifact is measured: accuracy, size, latency and the hardware cost models."""
from ._base import BaseCostModel, BaseObjective, Measurement
from .accuracy import Accuracy
from .latency import Latency, OrtCpuCostModel, cpu_name
from .profile import count_macs, count_params
from .size import ArtifactSize

__all__ = [
    "BaseObjective", "BaseCostModel", "Measurement", "Accuracy", "ArtifactSize", "Latency",
    "OrtCpuCostModel", "count_macs", "count_params", "cpu_name",
]
