"""Latency: milliseconds per batch of the trial's artifact, from the study's cost model (``hardware=``)."""
from __future__ import annotations

from typing import Any, ClassVar

from ._base import BaseCostModel, BaseObjective, Measurement, Outcome


class Latency(BaseObjective):
    """The cost model's latency of the artifact (minimise); its spread is recorded as ``latency_spread_ms``."""

    name: ClassVar[str] = "latency_ms"
    direction = "minimize"
    unit = "ms"
    label = "latency (ms)"

    def __init__(self, *, cost_model: BaseCostModel) -> None:
        self.cost_model = cost_model

    def __call__(self, outcome: Outcome) -> Measurement:
        return self.cost_model.latency_ms(outcome.artifact)

    def attrs(self, value: float | Measurement) -> dict[str, Any]:
        return {"latency_spread_ms": value.spread_ms} if isinstance(value, Measurement) else {}
