"""Low-rank factorization by truncated SVD.

Linear W (out x in) becomes Linear(in, r) then Linear(r, out); Conv2d W (out x in x k x k) becomes a
k x k conv to r channels then a 1x1 conv to ``out``. A layer is factorized only where that stores
fewer weights: r * (n_in + out) < out * n_in.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import torch
from torch import nn

from ._base import BaseSpace
from ._layers import set_submodule

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


def _svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.linalg.svd`` on one thread: on the 2-vCPU VMs this was built on, a 128 x 1152 SVD took
    2.9 s with 2 threads and 8 ms with one (the parallel LAPACK path thrashes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.svd(w, full_matrices=False)
    finally:
        torch.set_num_threads(threads)


def factorize(layer: nn.Module, rank: int) -> nn.Sequential:
    """Two layers whose product is the best rank-``rank`` approximation of ``layer``'s weight."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    u, s, vh = _svd(w)
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


class RankSpace(BaseSpace):
    """``rank.<fqn>``: kept fraction of the full rank, from ``ratios``; 1.0 leaves the layer alone."""

    knob = "rank"
    order = 1

    def __init__(
        self,
        *,
        model: nn.Module,
        ratios: Sequence[float] = (0.125, 0.25, 0.5, NO_FACTORIZATION),
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
    ) -> None:
        ratios = [float(r) for r in ratios]
        if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
            raise ValueError(f"space.knobs.rank.ratios must be values in (0, 1], got {ratios!r}")
        if NO_FACTORIZATION not in ratios:
            ratios.append(NO_FACTORIZATION)
        self.ratios = tuple(ratios)
        super().__init__(model=model, include=include, exclude=exclude)

    def eligible(self, model: nn.Module, layers: list[str]) -> list[str]:
        """Layers where at least one ratio (< 1) would store fewer weights."""
        return [f for f in layers if any(rank_for(model.get_submodule(f), r) for r in self.ratios)]

    @property
    def identity_value(self) -> float:
        return NO_FACTORIZATION

    def check(self, value: Any, key: str) -> None:
        if value not in self.ratios:
            raise ValueError(f"{key}: rank ratio {value!r} is not among the choices {list(self.ratios)}")

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        return {self.name(f): trial.suggest_categorical(self.name(f), self.ratios) for f in self.layers}

    def apply(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        values = self.values(params)
        model = copy.deepcopy(model)
        for fqn, ratio in values.items():
            layer = model.get_submodule(fqn)
            rank = rank_for(layer, ratio)
            if rank is not None:
                set_submodule(model, fqn, factorize(layer, rank))
        return model
