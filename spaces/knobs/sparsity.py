"""Unstructured magnitude pruning: the smallest-magnitude weights of each layer set to zero."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import torch
from torch import nn

from .._base import BaseKnob, Phase
from .._compressed import mask_
from .._layers import layers_of

__all__ = ["SparsityKnob"]


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """1 for the kept weights, 0 for the ``floor(sparsity * n)`` smallest by magnitude."""
    n_zero = int(sparsity * weight.numel())
    mask = torch.ones_like(weight)
    if n_zero > 0:
        idx = torch.argsort(weight.detach().abs().flatten(), stable=True)[:n_zero]
        mask.view(-1)[idx] = 0.0
    return mask


class SparsityKnob(BaseKnob):
    """Per-layer fraction of weights pruned by magnitude: ``sparsity.<fqn>`` in [low, high]."""

    knob = "sparsity"
    phase = Phase.SPARSIFY
    label = "sparsity (weights zeroed)"
    short = "sparsity"
    harder = "high"
    technique = "pruned by weight magnitude"
    grid = (0.25, 0.5, 0.75, 0.9)  # the values a sweep tries inside [low, high] (besides 0)

    def __init__(
        self, *, model: nn.Module, low: float = 0.0, high: float = 0.95, include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
    ) -> None:
        for key, value in (("low", low), ("high", high)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"space.knobs.sparsity.{key} must be in [0, 1), got {value!r}")
        if low > high:
            raise ValueError(f"space.knobs.sparsity: low must be <= high, got {low=}, {high=}")
        self.low, self.high = float(low), float(high)
        super().__init__(model=model, include=include, exclude=exclude)

    @property
    def identity_value(self) -> float:
        return 0.0

    def choices(self, fqn: str) -> tuple[float, ...]:
        inside = [v for v in self.grid if self.low <= v <= self.high]
        return tuple(dict.fromkeys([0.0, self.low, *inside]))

    def suggest(self, trial: optuna.Trial, fqn: str) -> float:
        return trial.suggest_float(self.name(fqn), self.low, self.high)

    def check(self, value: Any, key: str) -> None:
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{key}: sparsity must be in [0, 1), got {value!r}")

    def apply_(self, model: nn.Module, values: Mapping[str, float]) -> None:
        for fqn, sparsity in values.items():
            if sparsity <= 0:
                continue
            for _, layer in layers_of(model, fqn):
                mask_(layer, magnitude_mask(layer.weight, sparsity))

    def baselines(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        if self.high < 0.5:
            return {}
        return {"global_magnitude_50": {"sparsity": self.global_magnitude(model, 0.5)}}

    def global_magnitude(self, model: nn.Module, sparsity: float) -> dict[str, float]:
        """Per-layer sparsities equal to one global magnitude threshold over all layers' weights."""
        weights = {fqn: layers_of(model, fqn)[0][1].weight.detach().abs().flatten() for fqn in self.layers}
        threshold = torch.quantile(torch.cat(list(weights.values())), sparsity)
        return {fqn: min(float((w < threshold).float().mean()), self.high) for fqn, w in weights.items()}

    def describe(self, reference: nn.Module, built: nn.Module) -> str:
        layers = [m for m in built.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        zeros = sum(int((m.weight_mask == 0).sum()) for m in layers if getattr(m, "weight_mask", None) is not None)
        return f"{zeros / sum(m.weight.numel() for m in layers):.0%}" if zeros else ""
