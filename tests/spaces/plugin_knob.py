"""A knob written as a user would write one in their own package, with nothing but the public names of ``spaces``,
plugged into a search by config alone::

    python -m search +space.knobs.rows._target_=tests.spaces.plugin_knob.RowSparsityKnob

Row-balanced sparsity: in every output channel (a row of the weight) the same fraction of weights, the smallest by
magnitude, zeroed. Its phase is ``SPARSIFY``, so on each layer a trial chooses it or the built-in ``sparsity``; and it
acts after pruning and factorization, on whatever they made of a layer: ``layers_of`` gives the layers that stand for
the teacher's (both factors of a factorized one, with their own shapes), ``mask_`` zeroes the weights for good
(fine-tuning keeps them zero, the packed file stores only the kept ones).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from spaces import BaseKnob, Phase, layers_of, mask_


def row_mask(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """1 for the kept weights; in each row, the ``floor(fraction * row length)`` smallest by magnitude are 0."""
    rows = weight.detach().reshape(weight.shape[0], -1).abs()
    n_zero = int(fraction * rows.shape[1])
    mask = torch.ones_like(rows)
    if n_zero > 0:
        mask.scatter_(1, torch.argsort(rows, dim=1, stable=True)[:, :n_zero], 0.0)
    return mask.reshape(weight.shape)


class RowSparsityKnob(BaseKnob):
    """``rows.<fqn>``: the fraction of each output channel's weights zeroed, from ``fractions``; 0 leaves it dense."""

    knob = "rows"
    phase = Phase.SPARSIFY
    label = "row-balanced sparsity (weights zeroed per channel)"
    short = "row sparsity"
    harder = "high"
    technique = "pruned row by row by weight magnitude"

    def __init__(self, *, model: nn.Module, fractions: Sequence[float] = (0.0, 0.5, 0.75),
                 include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> None:
        fractions = [float(f) for f in fractions]
        if any(not 0.0 <= f < 1.0 for f in fractions):
            raise ValueError(f"space.knobs.rows.fractions must be values in [0, 1), got {fractions!r}")
        self.fractions = tuple(dict.fromkeys([0.0, *fractions]))
        super().__init__(model=model, include=include, exclude=exclude)

    @property
    def identity_value(self) -> float:
        return 0.0

    def choices(self, fqn: str) -> tuple[float, ...]:
        return self.fractions

    def check(self, value: Any, key: str) -> None:
        if value not in self.fractions:
            raise ValueError(f"{key}: fraction {value!r} is not among the choices {list(self.fractions)}")

    def apply_(self, model: nn.Module, values: Mapping[str, float]) -> None:
        for fqn, fraction in values.items():
            if fraction > 0:
                for _, layer in layers_of(model, fqn):
                    mask_(layer, row_mask(layer.weight, fraction))

    def baselines(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        # every layer factorized first where the space has the rank knob: what a layer-by-layer knob failed on
        return {"rows_after_rank": {"rank": 0.125, "rows": 0.5}}
