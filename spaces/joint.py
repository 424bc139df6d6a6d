"""Several knobs in one trial: structure first (channels, rank), then values (sparsity, bits)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from torch import nn

from ._base import BaseSpace
from .fold import fold_batchnorm


class JointSpace:
    """Composes spaces into one parameter dict.

    ``apply(teacher, params)`` is the whole replay of a trial: prune channels, factorize, mask
    (``apply_structure``, BatchNorm kept), then fold conv+BN and quantize (``finish``), each step a
    new module built from the previous one. Recovery may fine-tune between the two halves.
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
        return self.finish(self.apply_structure(model, params), params)

    def apply_structure(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        """Channels, rank and sparsity, with BatchNorm still in place (it helps fine-tuning)."""
        known = set(self.identity())
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"params: unknown parameter(s) {unknown}; this space takes {sorted(known)}")
        for space in self.spaces:
            if not space.after_folding:
                model = space.apply(model, params)
        return model

    def finish(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        """Fold conv+BN, then the knobs that need folded weights (quantization)."""
        model = fold_batchnorm(model)
        for space in self.spaces:
            if space.after_folding:
                model = space.apply(model, params)
        return model

    def changes_structure(self, params: Mapping[str, Any]) -> bool:
        return any(params[k] != v for s in self.spaces if not s.after_folding for k, v in s.identity().items())

    def quantizes(self, params: Mapping[str, Any]) -> bool:
        return any(params[k] != v for s in self.spaces if s.after_folding for k, v in s.identity().items())

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
