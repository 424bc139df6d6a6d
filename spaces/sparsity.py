"""Unstructured magnitude pruning: the smallest-magnitude weights of each layer set to zero."""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import torch
from torch import nn

from ._base import BaseSpace
from ._compressed import compressed
from ._layers import targets


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """1 for the kept weights, 0 for the ``floor(sparsity * n)`` smallest by magnitude."""
    n_zero = int(sparsity * weight.numel())
    mask = torch.ones_like(weight)
    if n_zero > 0:
        idx = torch.argsort(weight.detach().abs().flatten(), stable=True)[:n_zero]
        mask.view(-1)[idx] = 0.0
    return mask


class SparsitySpace(BaseSpace):
    """Per-layer fraction of weights pruned by magnitude: ``sparsity.<fqn>`` in [low, high]."""

    knob = "sparsity"
    order = 2

    def __init__(
        self,
        *,
        model: nn.Module,
        low: float = 0.0,
        high: float = 0.95,
        include: Sequence[str] = ("*",),
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

    def check(self, value: Any, key: str) -> None:
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{key}: sparsity must be in [0, 1), got {value!r}")

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        return {self.name(f): trial.suggest_float(self.name(f), self.low, self.high) for f in self.layers}

    def apply(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        values = self.values(params)
        model = copy.deepcopy(model)
        for fqn, sparsity in values.items():
            if sparsity <= 0:
                continue
            for _, layer in targets(model, fqn):
                layer = compressed(layer)
                layer.weight_mask = magnitude_mask(layer.weight, sparsity)
        return model
