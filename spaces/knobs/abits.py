"""Per-layer input activation bit-width: a calibrated per-tensor uint8 range on the layer's input.

Only layers whose weights are quantized for int8 kernels (the ``bits`` knob at <= 8 bits) take it: ONNX
Runtime's int8 kernels need both, and a float layer with quantized inputs would only add rounding.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .._base import BaseKnob, Phase
from .._compressed import ActFakeQuant, _Compressed
from .._layers import targets
from ..packing import FLOAT_BITS
from .bits import check_bit_choices

__all__ = ["ActivationBitsKnob"]

ALLOWED_ACT_BITS = (8, FLOAT_BITS)


class ActivationBitsKnob(BaseKnob):
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

    def __init__(
        self, *, model: nn.Module, choices: Sequence[int] = (8, FLOAT_BITS), include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
    ) -> None:
        self.bits = check_bit_choices(choices, ALLOWED_ACT_BITS, "space.knobs.abits.choices")
        super().__init__(model=model, include=include, exclude=exclude)

    @property
    def identity_value(self) -> int:
        return FLOAT_BITS

    def choices(self, fqn: str) -> tuple[int, ...]:
        return self.bits

    def check(self, value: Any, key: str) -> None:
        if isinstance(value, bool) or value not in self.bits:
            raise ValueError(f"{key}: bit-width {value!r} is not among the choices {list(self.bits)}")

    def apply_(self, model: nn.Module, values: Mapping[str, int]) -> None:
        for fqn, bits in values.items():
            if bits >= FLOAT_BITS:
                continue
            for _, layer in targets(model, fqn):
                if isinstance(layer, _Compressed) and layer.wq is not None and layer.wq.int8:
                    layer.act = ActFakeQuant(int(bits))

    def describe(self, reference: nn.Module, built: nn.Module) -> str:
        layer = next(m for m in built.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        act = getattr(layer, "act", None)
        return str(act.bits) if act is not None else ""
