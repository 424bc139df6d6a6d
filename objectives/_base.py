"""The extension points of this package: an objective, and a hardware cost model for latency."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal


class BaseObjective(abc.ABC):
    """One number a trial is scored by, and which way is better."""

    name: ClassVar[str]
    direction: ClassVar[Literal["maximize", "minimize"]]
    unit: ClassVar[str] = ""

    @abc.abstractmethod
    def __call__(self, *args: Any, **kwargs: Any) -> float: ...


@dataclass(frozen=True)
class Measurement:
    """A latency in milliseconds with its spread (interquartile range) over ``samples`` repeats."""

    value_ms: float
    spread_ms: float = 0.0
    samples: tuple[float, ...] = field(default=(), repr=False)


class BaseCostModel(abc.ABC):
    """How long an artifact takes on a device: measured, looked up or estimated.

    An artifact is what ``spaces.materialize`` returns: ``onnx`` (bytes), ``input_shape``, and
    where available ``example`` (real input samples) and ``module`` (the plain PyTorch model).
    """

    name: ClassVar[str]
    #: True when ``latency_ms`` times the artifact on a real runtime; False for predictors.
    measures: ClassVar[bool] = True

    @abc.abstractmethod
    def latency_ms(self, artifact: Any) -> Measurement:
        """Latency of one batch of the artifact's ONNX model."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Where and how it measures: at least ``cost_model`` (its name) and ``device``."""

    def reference(self) -> "BaseCostModel":
        """The cost model that measures on the real runtime: pick verifies with it. Itself if it measures."""
        return self
