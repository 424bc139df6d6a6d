"""Low-rank factorization by truncated SVD.

Linear W (out x in) becomes Linear(in, r) then Linear(r, out); Conv2d W (out x in x k x k) becomes a
k x k conv to r channels then a 1x1 conv to ``out``. A layer is factorized only where that stores
fewer weights: r * (n_in + out) < out * n_in.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._base import BaseKnob, Phase
from .._layers import set_submodule, single_thread

__all__ = ["RankKnob"]

NO_FACTORIZATION = 1.0


def _fan_in(layer: nn.Module) -> int:
    return layer.weight[0].numel()


def rank_for(layer: nn.Module, ratio: float) -> int | None:
    """The rank ``ratio`` asks for, or None where factorizing would not save weights."""
    if ratio >= NO_FACTORIZATION or getattr(layer, "groups", 1) != 1:
        return None
    out, fan_in = layer.weight.shape[0], _fan_in(layer)
    rank = max(1, round(ratio * min(out, fan_in)))
    return rank if rank * (fan_in + out) < out * fan_in else None


def factorize(layer: nn.Module, rank: int) -> nn.Sequential:
    """Two layers whose product is the best rank-``rank`` approximation of ``layer``'s weight."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    with single_thread():
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    first_w, second_w = root[:, None] * vh[:rank], u[:, :rank] * root[None, :]
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features, bias=has_bias)
        first.weight.data.copy_(first_w)
        second.weight.data.copy_(second_w)
    else:
        first = nn.Conv2d(
            layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
            bias=False, padding_mode=layer.padding_mode,
        )
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=has_bias)
        first.weight.data.copy_(first_w.reshape(first.weight.shape))
        second.weight.data.copy_(second_w.reshape(second.weight.shape))
    if has_bias:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


class RankKnob(BaseKnob):
    """``rank.<fqn>``: kept fraction of the full rank, from ``ratios``; 1.0 leaves the layer alone."""

    knob = "rank"
    phase = Phase.FACTORIZE
    label = "rank kept (low-rank factorization)"
    short = "rank kept"
    harder = "low"
    technique = "factorized by truncated SVD"

    def __init__(
        self, *, model: nn.Module, ratios: Sequence[float] = (0.125, 0.25, 0.5, NO_FACTORIZATION),
        include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
    ) -> None:
        ratios = [float(r) for r in ratios]
        if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
            raise ValueError(f"space.knobs.rank.ratios must be values in (0, 1], got {ratios!r}")
        if NO_FACTORIZATION not in ratios:
            ratios.append(NO_FACTORIZATION)
        self.ratios = tuple(ratios)
        super().__init__(model=model, include=include, exclude=exclude)

    ineligible = "no rank ratio stores fewer weights (or a grouped convolution)"

    def eligible(self, model: nn.Module, layers: list[str]) -> list[str]:
        """Layers where at least one ratio (< 1) would store fewer weights."""
        return [f for f in layers if any(rank_for(model.get_submodule(f), r) for r in self.ratios)]

    @property
    def identity_value(self) -> float:
        return NO_FACTORIZATION

    def choices(self, fqn: str) -> tuple[float, ...]:
        return self.ratios

    def check(self, value: Any, key: str) -> None:
        if value not in self.ratios:
            raise ValueError(f"{key}: rank ratio {value!r} is not among the choices {list(self.ratios)}")

    def apply_(self, model: nn.Module, values: Mapping[str, float]) -> None:
        for fqn, ratio in values.items():
            layer = model.get_submodule(fqn)
            rank = rank_for(layer, ratio)
            if rank is not None:
                set_submodule(model, fqn, factorize(layer, rank))

    def baselines(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        return {"rank_50": {"rank": 0.5}}

    def describe(self, reference: nn.Module, built: nn.Module) -> str:
        return str(built[0].weight.shape[0]) if isinstance(built, nn.Sequential) and len(built) == 2 else ""
