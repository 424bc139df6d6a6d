"""Tensor-train factorization of fully connected layers (the TT-matrix format of Novikov et al., "Tensorizing
Neural Networks", NeurIPS 2015).

A Linear of in_features = m_1 ... m_d and out_features = n_1 ... n_d has its weight W (out x in) read as a 2d-way
tensor W[(n_1, m_1), ..., (n_d, m_d)] and stored as d cores G_k of shape (r_{k-1}, n_k, m_k, r_k), r_0 = r_d = 1,
whose product is that tensor. The cores come from TT-SVD (Oseledets, "Tensor-Train Decomposition", SIAM J. Sci.
Comput. 2011): sequential truncated SVDs of the tensor's unfoldings, left to right. The layer then computes
y = x W^T + b by contracting the input with one core after another (reshape, transpose, matmul: plain ONNX
operators), never forming W; the cores are its parameters, trained in the recovery fine-tune and stored in the
packed file as they are, so the size objective counts exactly the cores (and the bias).

Both sizes are split into d balanced factors each at least 2 (d = ``cores``, or fewer where a size has fewer
prime factors; a prime size has no split and the layer is left out). The search picks, per layer, the TT-ranks
as a fraction of their full values (``ratios``: r_k = ratio x min(n_1 m_1 ... n_k m_k, n_{k+1} m_{k+1} ...
n_d m_d), at least 1); 1.0 leaves the layer alone, and a layer is factorized only where the cores store fewer
weights than W. TT and the ``rank`` knob both rewrite a layer's weight structure: they share the ``factorize``
phase, so a layer takes one of them. The knobs of later phases (sparsity, bit-widths) find no Conv2d/Linear in a
TT layer (``spaces.layers_of``) and leave its cores in float32.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._base import BaseKnob, Phase
from .._layers import set_submodule, single_thread

__all__ = ["TensorTrainKnob", "TTLinear"]

NO_FACTORIZATION = 1.0
MIN_CORES = 2


@functools.lru_cache(maxsize=None)
def balanced_modes(size: int, d: int) -> tuple[int, ...] | None:
    """``size`` as d factors, each at least 2, as even as they come (the smallest largest factor), largest
    first; None where it has fewer than d prime factors."""
    divisors = sorted({f for i in range(1, math.isqrt(size) + 1) if size % i == 0 for f in (i, size // i)} - {1})

    def splits(n: int, parts: int, cap: int) -> list[tuple[int, ...]]:
        if parts == 1:
            return [(n,)] if 2 <= n <= cap else []
        return [(f, *rest) for f in divisors if f <= cap and n % f == 0 for rest in splits(n // f, parts - 1, f)]

    found = splits(size, d, size)
    return min(found, key=lambda modes: (max(modes), modes)) if found else None


def tt_modes(layer: nn.Module, cores: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(out modes n_k, in modes m_k) of a Linear: the most cores, up to ``cores``, into which both sizes split."""
    if not isinstance(layer, nn.Linear):
        return None
    for d in range(cores, MIN_CORES - 1, -1):
        out_modes, in_modes = balanced_modes(layer.out_features, d), balanced_modes(layer.in_features, d)
        if out_modes and in_modes:
            return out_modes, in_modes
    return None


def tt_ranks(out_modes: Sequence[int], in_modes: Sequence[int], ratio: float) -> tuple[int, ...]:
    """(r_0, ..., r_d) at ``ratio`` of each full TT-rank; each at most what the truncated rank before it allows."""
    sizes = [n * m for n, m in zip(out_modes, in_modes)]
    ranks = [1]
    for k in range(1, len(sizes)):
        full = min(math.prod(sizes[:k]), math.prod(sizes[k:]))
        ranks.append(min(max(1, round(ratio * full)), ranks[-1] * sizes[k - 1]))
    return (*ranks, 1)


def tt_shapes(layer: nn.Module, ratio: float, cores: int) -> list[tuple[int, int, int, int]] | None:
    """The cores' shapes ``ratio`` asks for on ``layer``, or None where they would not store fewer weights than
    its dense weight (or the layer is no Linear whose sizes split into at least two factors each)."""
    modes = tt_modes(layer, cores)
    if ratio >= NO_FACTORIZATION or modes is None:
        return None
    ranks = tt_ranks(*modes, ratio)
    shapes = [(ranks[k], n, m, ranks[k + 1]) for k, (n, m) in enumerate(zip(*modes))]
    return shapes if sum(map(math.prod, shapes)) < layer.weight.numel() else None


def tt_svd(weight: torch.Tensor, shapes: Sequence[tuple[int, int, int, int]]) -> list[torch.Tensor]:
    """The TT cores of ``weight`` (out x in) at the shapes given: TT-SVD, left to right (Oseledets 2011, Alg. 1)."""
    out_modes, in_modes = [s[1] for s in shapes], [s[2] for s in shapes]
    d = len(shapes)
    tensor = weight.detach().reshape(*out_modes, *in_modes)
    rest = tensor.permute(*(i for k in range(d) for i in (k, d + k)))  # (n_1, m_1, ..., n_d, m_d)
    cores = []
    for r, n, m, s in shapes[:-1]:
        with single_thread():
            u, sv, vh = torch.linalg.svd(rest.reshape(r * n * m, -1), full_matrices=False)
        cores.append(u[:, :s].reshape(r, n, m, s))
        rest = sv[:s, None] * vh[:s]
    return [*cores, rest.reshape(shapes[-1])]


class TTLinear(nn.Module):
    """y = x W^T + b with W held as TT cores (r_{k-1}, n_k, m_k, r_k): the input contracted core by core."""

    def __init__(self, cores: Sequence[torch.Tensor], bias: torch.Tensor | None) -> None:
        super().__init__()
        self.cores = nn.ParameterList(nn.Parameter(c.detach().clone()) for c in cores)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        # the shapes as plain ints: the forward pass reads no tensor's shape but the input's, so torch.fx traces it
        # (conv+BN folding) and the ONNX graph holds the modes as constants
        self.shapes = tuple(tuple(int(d) for d in c.shape) for c in cores)
        self.out_modes, self.in_modes = (tuple(s[i] for s in self.shapes) for i in (1, 2))
        self.out_features, self.in_features = math.prod(self.out_modes), math.prod(self.in_modes)

    @property
    def ranks(self) -> tuple[int, ...]:
        return (*(s[0] for s in self.shapes), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # t: (batch, outputs so far n_1..n_{k-1}, r_{k-1}, inputs still to read m_k..m_d)
        t, done, rest = x.reshape(-1, 1, 1, self.in_features), 1, self.in_features
        for k, (r, n, m, s) in enumerate(self.shapes):
            rest //= m
            t = t.reshape(-1, done, r, m, rest).permute(0, 1, 4, 2, 3).reshape(-1, r * m)
            t = t @ self.cores[k].permute(0, 2, 1, 3).reshape(r * m, n * s)
            t = t.reshape(-1, done, rest, n, s).permute(0, 1, 3, 4, 2)
            done *= n
            t = t.reshape(-1, done, s, rest)
        y = t.reshape(x.shape[:-1] + (self.out_features,))
        return y if self.bias is None else y + self.bias

    def multiply_accumulates(self, x: torch.Tensor) -> int:
        """The matmuls' multiply-accumulates on ``x`` (``objectives.count_macs`` reads them): each core meets every
        (output so far, input still to read) pair of every row."""
        rows, done, rest, total = x.numel() // self.in_features, 1, self.in_features, 0
        for r, n, m, s in self.shapes:
            rest //= m
            total += rows * done * rest * r * m * n * s
            done *= n
        return total

    def extra_repr(self) -> str:
        modes = "x".join(map(str, self.in_modes)), "x".join(map(str, self.out_modes))
        return f"{modes[0]} -> {modes[1]}, ranks={self.ranks}, bias={self.bias is not None}"


def factorize(layer: nn.Linear, shapes: Sequence[tuple[int, int, int, int]]) -> TTLinear:
    """The TT layer of ``layer`` with cores of ``shapes`` (its bias kept)."""
    return TTLinear(tt_svd(layer.weight, shapes), layer.bias)


class TensorTrainKnob(BaseKnob):
    """``tt.<fqn>``: the fraction of each full TT-rank kept, from ``ratios``; 1.0 leaves the layer alone."""

    knob = "tt"
    phase = Phase.FACTORIZE
    label = "TT-ranks kept (tensor-train factorization)"
    short = "TT-rank kept"
    harder = "low"
    technique = "factorized as tensor trains (TT cores)"

    def __init__(
        self, *, model: nn.Module, ratios: Sequence[float] = (0.125, 0.25, 0.5, NO_FACTORIZATION), cores: int = 3,
        include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
    ) -> None:
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < MIN_CORES:
            raise ValueError(f"space.knobs.tt.cores must be a whole number >= {MIN_CORES}, got {cores!r}")
        if isinstance(ratios, (str, bytes)) or not hasattr(ratios, "__iter__"):
            raise ValueError(f"space.knobs.tt.ratios must be a list of numbers in (0, 1], got {ratios!r}")
        bad = [r for r in ratios if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r <= 1.0]
        if not ratios or bad:
            raise ValueError(f"space.knobs.tt.ratios: {bad[0] if bad else list(ratios)!r} is not allowed; "
                             "the ratios must be a non-empty list of numbers in (0, 1]")
        ratios = [float(r) for r in ratios]
        if NO_FACTORIZATION not in ratios:
            ratios.append(NO_FACTORIZATION)
        self.ratios, self.cores = tuple(ratios), cores
        super().__init__(model=model, include=include, exclude=exclude)
        for fqn in self.left_out:
            self.left_out[fqn] = self.why_not(model.get_submodule(fqn))

    ineligible = "no TT-rank ratio stores fewer weights"

    def why_not(self, layer: nn.Module) -> str:
        """Why ``layer`` is left out, said at start-up."""
        if not isinstance(layer, nn.Linear):
            return "not a Linear"
        if tt_modes(layer, self.cores) is None:
            return (f"{layer.out_features} x {layer.in_features} does not split into {MIN_CORES} or more factors "
                    "(each >= 2) on both sides (a prime size)")
        return self.ineligible

    def eligible(self, model: nn.Module, layers: list[str]) -> list[str]:
        """Linears whose sizes split, where at least one ratio (< 1) would store fewer weights."""
        return [f for f in layers if any(tt_shapes(model.get_submodule(f), r, self.cores) for r in self.ratios)]

    @property
    def identity_value(self) -> float:
        return NO_FACTORIZATION

    def choices(self, fqn: str) -> tuple[float, ...]:
        return self.ratios

    def check(self, value: Any, key: str) -> None:
        if isinstance(value, bool) or value not in self.ratios:
            raise ValueError(f"{key}: TT-rank ratio {value!r} is not among the choices {list(self.ratios)}")

    def apply_(self, model: nn.Module, values: Mapping[str, float]) -> None:
        for fqn, ratio in values.items():
            layer = model.get_submodule(fqn)  # its sizes now: pruning may have removed some of its inputs
            shapes = tt_shapes(layer, ratio, self.cores)
            if shapes is not None:
                set_submodule(model, fqn, factorize(layer, shapes))

    def describe(self, reference: nn.Module, built: nn.Module) -> str:
        if not isinstance(built, TTLinear):
            return ""
        return f"ranks {'-'.join(map(str, built.ranks))}"
