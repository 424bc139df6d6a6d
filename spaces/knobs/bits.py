"""Per-layer weight bit-width: linear (affine, per output channel) quantization, or float16.

Weights at ``b`` <= 8 bits are simulated in PyTorch (quantize-dequantize, straight-through gradient) and stored as
b-bit codes with a float32 scale and a uint8 zero point per output channel (``spaces/packing.py``). With 8-bit
inputs (the ``abits`` knob) the layer is exported as int8 QDQ and runs on integer kernels.

``16`` is weight-only float16 (``Float16Quantizer``): each weight rounded to float16 in PyTorch (straight-through in
the fine-tune), stored as 2 bytes a kept weight, and in the ONNX model as a float16 initializer with a ``Cast`` to
float32 (about half the bytes of that layer's float32 weights). It is not an int8 form: with ``abits`` 8 the layer
still runs in float, its inputs unquantized, as a ``kmeans`` or ``pow2`` layer does (``abits`` leaves it alone);
only 2-8 bits with ``abits`` 8 run on int8 kernels. 16 is allowed, not a default choice: ``bits.yaml`` is also the
``compress`` space's, whose search stays as it was; add it with ``space.knobs.bits.choices=[2,3,4,6,8,16,32]``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .._base import BaseKnob, Phase
from .._compressed import Float16Quantizer, LinearQuantizer, quantize_
from .._layers import layers_of
from ..packing import FLOAT_BITS, HALF_BITS

__all__ = ["BitWidthKnob", "BitsKnob"]

ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, HALF_BITS, FLOAT_BITS)


def check_bit_choices(choices: Sequence[int], allowed: Sequence[int], key: str) -> tuple[int, ...]:
    """The configured bit-widths as ints, each one of ``allowed``; else a ValueError naming ``key``."""
    if isinstance(choices, (str, bytes)) or not choices:
        raise ValueError(f"{key} must list at least one bit-width, got {choices!r}")
    for b in choices:
        if isinstance(b, bool) or b not in allowed:
            raise ValueError(f"{key}: bit-width {b!r} is not supported; allowed: {list(allowed)}")
    return tuple(int(b) for b in choices)


class BitWidthKnob(BaseKnob):
    """A knob whose value per layer is a bit-width from ``choices`` (``allowed`` says which may be configured),
    32 = float: the shared part of ``bits``, ``abits`` and ``kmeans``. Not a knob by itself (no ``knob``)."""

    allowed: tuple[int, ...] = ALLOWED_BITS

    def __init__(
        self, *, model: nn.Module, choices: Sequence[int], include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
    ) -> None:
        self.bits = check_bit_choices(choices, self.allowed, f"space.knobs.{self.knob}.choices")
        super().__init__(model=model, include=include, exclude=exclude)

    @property
    def identity_value(self) -> int:
        return FLOAT_BITS

    def choices(self, fqn: str) -> tuple[int, ...]:
        return self.bits

    def check(self, value: Any, key: str) -> None:
        if isinstance(value, bool) or value not in self.bits:
            raise ValueError(f"{key}: bit-width {value!r} is not among the choices {list(self.bits)}")

    def layers_to_change(self, model: nn.Module, values: Mapping[str, int]):
        """(bit-width, compressible module) for every layer of ``values`` not left at 32 (a factorized layer's
        factors each)."""
        for fqn, bits in values.items():
            if bits < FLOAT_BITS:
                for _, layer in layers_of(model, fqn):
                    yield int(bits), layer


class BitsKnob(BitWidthKnob):
    """``bits.<fqn>``: the weights' bit-width from ``choices``: 2-8 linear codes, 16 float16; 32 leaves them
    float."""

    knob = "bits"
    phase = Phase.QUANTIZE
    label = "weight bits"
    short = "w bits"
    harder = "low"
    unit = "bits"
    scale = "log2"
    technique = "store their weights at 8 bits or fewer (affine, per output channel) or as float16"

    def __init__(
        self, *, model: nn.Module, choices: Sequence[int] = (2, 3, 4, 6, 8, FLOAT_BITS),
        include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
    ) -> None:
        super().__init__(model=model, choices=choices, include=include, exclude=exclude)

    def apply_(self, model: nn.Module, values: Mapping[str, int]) -> None:
        for bits, layer in self.layers_to_change(model, values):
            quantize_(layer, Float16Quantizer() if bits == HALF_BITS else LinearQuantizer(bits))

    def baselines(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        return {"uniform_int8": {"bits": 8, "abits": 8}, "uniform_w4a8": {"bits": 4, "abits": 8}}

    def describe(self, reference: nn.Module, built: nn.Module) -> str:
        layer = next((m for m in built.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)  # none: a TT layer
        wq = getattr(layer, "wq", None)
        return str(wq.bits) if isinstance(wq, (LinearQuantizer, Float16Quantizer)) else ""
