"""Latency: milliseconds per batch of the trial's artifact, from the study's cost model (``hardware=``)."""
from __future__ import annotations

from typing import Any, ClassVar

from .hardware._base import BaseCostModel, Measurement
from ._base import BaseObjective, Outcome


class Latency(BaseObjective):
    """The cost model's latency of the artifact (minimise); its spread is recorded as ``latency_spread_ms``, and
    where the measurement took the host lock, the seconds it waited for it as ``latency_lock_wait_s`` (a study
    whose workers queue for long measures less than it could)."""

    name: ClassVar[str] = "latency_ms"
    direction = "minimize"
    unit = "ms"
    label = "latency (ms)"

    def __init__(self, *, cost_model: BaseCostModel) -> None:
        self.cost_model = cost_model

    def __call__(self, outcome: Outcome) -> Measurement:
        return self.cost_model.latency_ms(outcome.artifact)

    def attrs(self, value: float | Measurement) -> dict[str, Any]:
        if not isinstance(value, Measurement):
            return {}
        waited = {} if value.waited_s is None else {"latency_lock_wait_s": round(value.waited_s, 3)}
        return {"latency_spread_ms": value.spread_ms, **waited}
