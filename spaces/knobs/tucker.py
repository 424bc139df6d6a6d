"""Tucker-2 decomposition of convolutions (Kim et al., "Compression of Deep Convolutional Neural Networks for Fast
and Low Power Mobile Applications", ICLR 2016).

A k x k convolution W (C_out x C_in x k x k) becomes three: a 1x1 convolution from C_in to r_in channels, a k x k
convolution from r_in to r_out (the core, with the original stride, padding and dilation), and a 1x1 convolution
from r_out to C_out (with the original bias). The factors come from a higher-order SVD (HOSVD) with
``torch.linalg``: the leading left singular vectors of W unfolded along its output and its input mode, and the
core is W projected onto both. Kim et al. pick the ranks by variational Bayesian matrix factorisation; here the
search picks them, as a fraction of each mode's size from ``ratios`` (r_in = ratio x C_in, r_out = ratio x
C_out, at least 1). A layer is decomposed only where that stores fewer weights; elsewhere it is left alone.
Tucker-2 and the ``rank`` knob both rewrite a layer's weight structure: they share the ``factorize`` phase, so a
layer takes one of them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._base import BaseKnob, Phase
from .._layers import set_submodule, single_thread

__all__ = ["TuckerKnob"]

NO_DECOMPOSITION = 1.0


def tucker_ranks(layer: nn.Module, ratio: float) -> tuple[int, int] | None:
    """(r_in, r_out) that ``ratio`` asks for on a k x k (k > 1) ungrouped Conv2d, or None where Tucker-2 would not
    store fewer weights (or the layer is not such a convolution)."""
    if ratio >= NO_DECOMPOSITION or not isinstance(layer, nn.Conv2d) or layer.groups != 1:
        return None
    c_out, c_in, kh, kw = layer.weight.shape
    if kh * kw == 1:
        return None
    r_in, r_out = max(1, round(ratio * c_in)), max(1, round(ratio * c_out))
    stored = c_in * r_in + r_in * r_out * kh * kw + r_out * c_out
    return (r_in, r_out) if stored < c_out * c_in * kh * kw else None


def _leading(unfolded: torch.Tensor, rank: int) -> torch.Tensor:
    """The ``rank`` leading left singular vectors of a matrix (columns)."""
    with single_thread():
        u, _, _ = torch.linalg.svd(unfolded, full_matrices=False)
    return u[:, :rank]


def decompose(layer: nn.Conv2d, r_in: int, r_out: int) -> nn.Sequential:
    """1x1 (C_in -> r_in), k x k core (r_in -> r_out), 1x1 (r_out -> C_out) whose product is the HOSVD of the
    layer's weight at ranks (r_out, r_in) on its output and input modes."""
    w = layer.weight.detach()
    c_out, c_in, kh, kw = w.shape
    u_out = _leading(w.reshape(c_out, -1), r_out)  # C_out x r_out
    u_in = _leading(w.transpose(0, 1).reshape(c_in, -1), r_in)  # C_in x r_in
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)  # r_out x r_in x k x k
    first = nn.Conv2d(c_in, r_in, 1, bias=False)
    middle = nn.Conv2d(r_in, r_out, (kh, kw), layer.stride, layer.padding, layer.dilation, bias=False,
                       padding_mode=layer.padding_mode)
    last = nn.Conv2d(r_out, c_out, 1, bias=layer.bias is not None)
    first.weight.data.copy_(u_in.t().reshape(r_in, c_in, 1, 1))
    middle.weight.data.copy_(core)
    last.weight.data.copy_(u_out.reshape(c_out, r_out, 1, 1))
    if layer.bias is not None:
        last.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, middle, last)


class TuckerKnob(BaseKnob):
    """``tucker.<fqn>``: the fraction of each channel mode kept by Tucker-2, from ``ratios``; 1.0 leaves it alone."""

    knob = "tucker"
    phase = Phase.FACTORIZE
    label = "channels kept by Tucker-2 (core ranks)"
    short = "tucker kept"
    harder = "low"
    technique = "decomposed by Tucker-2 (1x1, k x k core, 1x1)"

    def __init__(
        self, *, model: nn.Module, ratios: Sequence[float] = (0.25, 0.5, 0.75, NO_DECOMPOSITION),
        include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
    ) -> None:
        ratios = [float(r) for r in ratios]
        if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
            raise ValueError(f"space.knobs.tucker.ratios must be values in (0, 1], got {ratios!r}")
        if NO_DECOMPOSITION not in ratios:
            ratios.append(NO_DECOMPOSITION)
        self.ratios = tuple(ratios)
        super().__init__(model=model, include=include, exclude=exclude)

    ineligible = "not a k x k convolution whose Tucker factors store fewer weights"

    def eligible(self, model: nn.Module, layers: list[str]) -> list[str]:
        """k x k convolutions where at least one ratio (< 1) would store fewer weights."""
        return [f for f in layers if any(tucker_ranks(model.get_submodule(f), r) for r in self.ratios)]

    @property
    def identity_value(self) -> float:
        return NO_DECOMPOSITION

    def choices(self, fqn: str) -> tuple[float, ...]:
        return self.ratios

    def check(self, value: Any, key: str) -> None:
        if isinstance(value, bool) or value not in self.ratios:
            raise ValueError(f"{key}: Tucker ratio {value!r} is not among the choices {list(self.ratios)}")

    def apply_(self, model: nn.Module, values: Mapping[str, float]) -> None:
        for fqn, ratio in values.items():
            layer = model.get_submodule(fqn)
            ranks = tucker_ranks(layer, ratio)
            if ranks is not None:
                set_submodule(model, fqn, decompose(layer, *ranks))

    def baselines(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        return {"tucker_50": {"tucker": 0.5}}

    def describe(self, reference: nn.Module, built: nn.Module) -> str:
        if isinstance(built, nn.Sequential) and len(built) == 3:
            return f"{built[1].weight.shape[1]}/{built[1].weight.shape[0]}"
        return ""
