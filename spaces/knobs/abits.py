"""Per-layer input activation bit-width: a calibrated per-tensor uint8 range on the layer's input.

Only layers whose weights are quantized for int8 kernels (the ``bits`` knob at <= 8 bits) take it: ONNX
Runtime's int8 kernels need both, and a float layer with quantized inputs would only add rounding.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from .._base import Phase
from .._compressed import ActFakeQuant, quantize_, weight_quantizer
from ..packing import FLOAT_BITS
from .bits import BitWidthKnob

__all__ = ["ActivationBitsKnob"]

ALLOWED_ACT_BITS = (8, FLOAT_BITS)


class ActivationBitsKnob(BitWidthKnob):
    """``abits.<fqn>``: the layer input's bit-width from ``choices`` (8 or 32 = float)."""

    knob = "abits"
    phase = Phase.ACTIVATIONS
    label = "activation bits"
    short = "a bits"
    harder = "low"
    unit = "bits"
    scale = "log2"
    technique = "take 8-bit inputs (calibrated per-tensor range) and run on int8 kernels"
    sweep_context = {"bits": 8}  # inputs are quantized only where the weights are, for int8 kernels
    allowed = ALLOWED_ACT_BITS

    def __init__(
        self, *, model: nn.Module, choices: Sequence[int] = (8, FLOAT_BITS), include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
    ) -> None:
        super().__init__(model=model, choices=choices, include=include, exclude=exclude)

    def apply_(self, model: nn.Module, values: Mapping[str, int]) -> None:
        for bits, layer in self.layers_to_change(model, values):
            weights = weight_quantizer(layer)
            if weights is not None and weights.int8:
                quantize_(layer, inputs=ActFakeQuant(bits))

    def describe(self, reference: nn.Module, built: nn.Module) -> str:
        layer = next(m for m in built.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        act = getattr(layer, "act", None)
        return str(act.bits) if act is not None else ""
