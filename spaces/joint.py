"""Several knobs in one trial: structure first (channels, rank), then values (sparsity, bits)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from torch import nn

from ._base import BaseSpace
from .fold import fold_batchnorm


class JointSpace:
    """Composes spaces into one parameter dict; conv+BN folding always comes first.

    ``apply(teacher, params)`` is the whole replay of a trial: fold, prune channels, factorize,
    mask, quantize, each step a new module built from the previous one.
    """

    def __init__(self, spaces: Sequence[BaseSpace]) -> None:
        knobs = [s.knob for s in spaces]
        if len(set(knobs)) != len(knobs):
            raise ValueError(f"space: each knob may appear once, got {knobs}")
        self.spaces = sorted(spaces, key=lambda s: s.order)

    def __getitem__(self, knob: str) -> BaseSpace:
        for space in self.spaces:
            if space.knob == knob:
                return space
        raise KeyError(knob)

    def __contains__(self, knob: str) -> bool:
        return any(s.knob == knob for s in self.spaces)

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for space in self.spaces:
            params.update(space.sample(trial))
        return params

    def apply(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        known = set(self.identity())
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"params: unknown parameter(s) {unknown}; this space takes {sorted(known)}")
        model = fold_batchnorm(model)
        for space in self.spaces:
            model = space.apply(model, params)
        return model

    def identity(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for space in self.spaces:
            params.update(space.identity())
        return params

    def with_values(self, **knob_params: Mapping[str, Any]) -> dict[str, Any]:
        """The identity policy with some knobs replaced: ``with_values(bits=space['bits'].uniform(8))``."""
        params = self.identity()
        for overrides in knob_params.values():
            params.update(overrides)
        return params
