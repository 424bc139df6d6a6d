"""MACs: multiply-accumulates of one sample through the trial's plain model (every Conv2d and Linear, dense
kernels). A device-independent proxy for compute, as the greedy compression-ratio selection of AIMET targets it."""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from ._base import BaseObjective, Outcome
from .profile import count_macs

__all__ = ["Macs"]


class Macs(BaseObjective):
    """Multiply-accumulates per sample of the artifact's plain model (minimise)."""

    name: ClassVar[str] = "macs"
    direction = "minimize"
    unit = "MACs"
    label = "MACs (M, log)"
    display = 1e-6
    log_axis = True

    def __init__(self, *, input_shape: Sequence[int]) -> None:
        self.input_shape = tuple(input_shape)

    def __call__(self, outcome: Outcome) -> float:
        return float(count_macs(outcome.artifact.module, self.input_shape))
