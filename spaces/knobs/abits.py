"""Per-layer input activation bit-width: a calibrated per-tensor uint8 range on the layer's input.

Only layers whose weights are quantized for int8 kernels (the ``bits`` knob at <= 8 bits) take it: ONNX
Runtime's int8 kernels need both, and a float layer with quantized inputs would only add rounding.

Two int8 paths (``linear``): ``static``, the calibrated range, exported as QDQ (``QLinearConv``/``QLinearMatMul``
after ONNX Runtime's fusions); ``dynamic``, each input's own range computed at run time
(``DynamicQuantizeLinear`` + ``MatMulInteger``, ONNX Runtime's ``quantize_dynamic``), for Linears only. ``auto``
(the default) takes dynamic for the Linears that read a sequence (an input of 3 or more dimensions: the tokens of a
transformer) and static for every other layer: on this project's CPUs a small ViT ran static QDQ on every Linear
1.2-1.4x slower than float and ``quantize_dynamic`` 1.1x faster, while dynamic convolutions (``ConvInteger``) ran a
CNN 7x slower (``benchmarks/user_models.py --int8-paths`` times the three together).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .._base import Phase
from .._layers import compressible_layers, example_input, layers_of
from .._compressed import ActFakeQuant, quantize_, weight_quantizer
from ..packing import FLOAT_BITS
from .bits import BitWidthKnob

__all__ = ["ActivationBitsKnob"]

ALLOWED_ACT_BITS = (8, FLOAT_BITS)
LINEAR_PATHS = ("auto", "static", "dynamic")


def sequence_linears(model: nn.Module, input_shape: Sequence[int], input_dtype: str = "float32") -> set[str]:
    """The Linears of ``model`` whose input has 3 or more dimensions (batch, tokens, features)."""
    seen: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda m, a, fqn=fqn: seen.add(fqn) if a[0].dim() >= 3 else None)
             for fqn, m in compressible_layers(model).items() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()(example_input(input_shape, torch.Generator().manual_seed(0), input_dtype))
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return seen


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
        self, *, model: nn.Module, choices: Sequence[int] = (8, FLOAT_BITS), linear: str = "auto",
        input_shape: Sequence[int] | None = None, input_dtype: str = "float32", include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
    ) -> None:
        if linear not in LINEAR_PATHS:
            raise ValueError(f"space.knobs.abits.linear must be one of {list(LINEAR_PATHS)}, got {linear!r}")
        super().__init__(model=model, choices=choices, include=include, exclude=exclude)
        self.linear = linear
        linears = {f for f in self.layers if isinstance(model.get_submodule(f), nn.Linear)}
        if linear == "dynamic":
            self.dynamic = linears
        elif linear == "auto" and input_shape is not None:
            self.dynamic = linears & sequence_linears(model, input_shape, input_dtype)
        else:
            self.dynamic = set()

    def apply_(self, model: nn.Module, values: Mapping[str, int]) -> None:
        for fqn, bits in values.items():
            if bits >= FLOAT_BITS:
                continue
            for _, layer in layers_of(model, fqn):
                weights = weight_quantizer(layer)
                if weights is not None and weights.int8:
                    quantize_(layer, inputs=ActFakeQuant(int(bits), dynamic=fqn in self.dynamic))

    def describe(self, reference: nn.Module, built: nn.Module) -> str:
        layer = next((m for m in built.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)  # none: a TT layer
        act = getattr(layer, "act", None)
        return str(act.bits) if act is not None else ""
