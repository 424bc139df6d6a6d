"""Logarithmic (power-of-two) weight quantization (Miyashita, Lee and Murmann 2016, "Convolutional Neural Networks
using Logarithmic Data Representation"; the same levels as INQ, Zhou et al., ICLR 2017).

Per layer, each kept weight becomes ``sign * 2**e`` or exactly zero. With b bits a weight's code is a sign bit and
a (b-1)-bit magnitude code: 0 is zero, 1 .. 2**(b-1)-1 the exponents ``emax, emax-1, ...`` down from the layer's
largest, so a layer holds 2**(b-1)-1 consecutive exponents (3 bits: 3 exponents, 5 bits: 15). Rounding is in the log
domain, as in Miyashita et al.: ``e = round(log2|w|)``, so ``emax`` is the largest weight's rounded exponent and a
weight whose exponent rounds below the window becomes zero. A multiplication by such a weight is a shift, which is
why the format is used in accelerators; here it buys size, at the accuracy the window leaves.

Fine-tuning trains the float weights behind the codes with a straight-through gradient, as ``bits`` does; the
window follows the weights (``emax`` is taken from them in every forward pass). Pruned weights (the ``sparsity``
knob) stay zero and take no code.

Stored as ``emax`` (a little-endian int16) and the kept weights' b-bit codes (codec ``"pow2"`` of
``spaces/packing.py``): the size objective counts exactly that. ONNX Runtime runs the layer in float with its decoded
weights, as for ``kmeans``: its int8 kernels take an affine grid, which powers of two are not, and no ONNX Runtime
kernel shifts, so the float kernel is the fastest exact form (the ``abits`` knob leaves such layers alone). Per layer
the weight quantizer is ``bits``, ``kmeans`` or ``pow2``, one at most: the three knobs share the ``quantize`` phase.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._base import Phase
from .._compressed import WeightQuantizer, quantize_
from ..packing import FLOAT_BITS, Codec, PackedTensor, nbytes, pack_bits, register_codec, unpack_bits
from .bits import BitWidthKnob

__all__ = ["Pow2Knob", "Pow2Quantizer"]

ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, FLOAT_BITS)  # 2 bits: one exponent, the ternary {-2^emax, 0, 2^emax}
HALF_OCTAVE = math.sqrt(0.5)  # frexp's mantissa in [0.5, 1): at or above 2**-0.5, log2|w| rounds up


def exponents(bits: int) -> int:
    """How many exponents a layer holds at ``bits`` bits: one code of the 2**(b-1) magnitudes is zero."""
    return 2 ** (bits - 1) - 1


def pow2_round(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(``w`` with every weight at ``sign * 2**e`` or zero, ``emax`` as a 0-d tensor, -inf where every weight is
    zero): ``e = round(log2|w|)`` from frexp (exact, no logarithm), kept where it lies in the window of
    ``exponents(bits)`` below ``emax``. Powers of two are exact in float64 and cast to ``w``'s dtype as ``np.ldexp``
    in the decoder does, so the two agree bit for bit. No value leaves the device (no sync in training)."""
    x = w.detach().double()
    mantissa, exponent = torch.frexp(x)
    e = (exponent - 1 + (mantissa.abs() >= HALF_OCTAVE).int()).double()
    nonzero = x != 0
    emax = torch.where(nonzero, e, -math.inf).max() if x.numel() else torch.tensor(-math.inf)
    kept = nonzero & (e > emax - exponents(bits))
    q = torch.where(kept, torch.ldexp(torch.sign(x), e), torch.zeros((), dtype=x.dtype))
    return q.to(w.dtype), emax


class Pow2Quantizer(WeightQuantizer):
    """A layer's weights as signed powers of two in a window of ``exponents(bits)`` below the largest, or zero;
    a straight-through gradient trains the float weights."""

    int8 = False

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q, _ = pow2_round(w, self.bits)
        if not (w.requires_grad and torch.is_grad_enabled()):
            return q  # bit-exact with what the packed file decodes to
        return w + (q - w).detach()

    def packed(self, name: str, w: torch.Tensor, mask: torch.Tensor | None) -> PackedTensor:
        return PackedTensor(name, self.forward(w).detach(), bits=self.bits, mask=mask, codec="pow2")

    def extra_repr(self) -> str:
        return f"bits={self.bits}, exponents={exponents(self.bits)}"


def _encode(kept: torch.Tensor, bits: int) -> tuple[dict, bytes]:
    """``emax`` (int16), then per kept value its sign bit (the top one) over its magnitude code (``emax - e + 1``,
    0 for zero)."""
    values = kept.detach().double().numpy()
    mantissa, exponent = np.frexp(values)
    nonzero = values != 0
    if np.any(np.abs(mantissa[nonzero]) != 0.5):
        raise ValueError("pow2 codec: a value is not a signed power of two")
    emax = int(exponent[nonzero].max()) - 1 if nonzero.any() else 0
    magnitude = np.where(nonzero, emax - (exponent - 1) + 1, 0).astype(np.uint64)
    if magnitude.max(initial=0) > exponents(bits):
        raise ValueError(f"pow2 codec: the exponents span more than the {exponents(bits)} that {bits} bits hold")
    codes = magnitude | ((values < 0).astype(np.uint64) << np.uint64(bits - 1))
    return {}, struct.pack("<h", emax) + pack_bits(codes, bits)


def _decode(data: bytes, pos: int, head: dict, kept: int) -> tuple[torch.Tensor, int]:
    bits = head["b"]
    (emax,) = struct.unpack_from("<h", data, pos)
    pos += 2
    codes = unpack_bits(data[pos : pos + nbytes(kept, bits)], kept, bits).astype(np.int64)
    magnitude, negative = codes & exponents(bits), codes >> (bits - 1)
    values = np.where(magnitude > 0, np.ldexp(np.where(negative > 0, -1.0, 1.0), emax - magnitude + 1), 0.0)
    return torch.from_numpy(values.astype(np.float32)), pos + nbytes(kept, bits)


register_codec("pow2", Codec(encode=_encode, decode=_decode))


class Pow2Knob(BitWidthKnob):
    """``pow2.<fqn>``: the layer's weights as b-bit signed powers of two (or zero), b from ``choices``; 32 leaves
    them float."""

    knob = "pow2"
    phase = Phase.QUANTIZE
    label = "power-of-two weights (bits per code)"
    short = "pow2 bits"
    harder = "low"
    unit = "bits"
    scale = "log2"
    technique = "stored as signed powers of two (logarithmic quantization)"
    allowed = ALLOWED_BITS

    def __init__(
        self, *, model: nn.Module, choices: Sequence[int] = (3, 4, 5, FLOAT_BITS),
        include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
    ) -> None:
        super().__init__(model=model, choices=choices, include=include, exclude=exclude)

    def apply_(self, model: nn.Module, values: Mapping[str, int]) -> None:
        for bits, layer in self.layers_to_change(model, values):
            quantize_(layer, Pow2Quantizer(bits))

    def baselines(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        return {"uniform_pow2_4": {"pow2": 4}}

    def describe(self, reference: nn.Module, built: nn.Module) -> str:
        layer = next((m for m in built.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)  # none: a TT layer
        wq = getattr(layer, "wq", None)
        if not isinstance(wq, Pow2Quantizer):
            return ""
        with torch.no_grad():
            _, top = pow2_round(layer.effective_weight(), wq.bits)
        if not math.isfinite(float(top)):
            return "all zero"
        emax = int(top)
        return f"±2^[{emax - exponents(wq.bits) + 1}, {emax}]"
