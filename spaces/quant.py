"""Per-layer weight bit-width and input activation bit-width (linear, affine, per-channel).

Weights at ``b`` bits are simulated in PyTorch (quantize-dequantize, straight-through gradient);
activations at 8 bits use a calibrated per-tensor range. A layer with 8-bit (or narrower) weights
and 8-bit activations is exported as int8 QDQ and runs on integer kernels.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from torch import nn

from ._base import BaseSpace
from ._compressed import FLOAT_BITS, ActFakeQuant, compressed
from ._layers import targets

ALLOWED_WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8, FLOAT_BITS)
ALLOWED_ACT_BITS = (8, FLOAT_BITS)


def _check_choices(choices: Sequence[int], allowed: Sequence[int], key: str) -> tuple[int, ...]:
    if not choices:
        raise ValueError(f"{key} must list at least one bit-width, got {choices!r}")
    for b in choices:
        if b not in allowed:
            raise ValueError(f"{key}: bit-width {b!r} is not supported; allowed: {list(allowed)}")
    return tuple(int(b) for b in choices)


class QuantSpace(BaseSpace):
    """``bits.<fqn>`` (weights) and ``abits.<fqn>`` (inputs) from the configured choices; 32 = float."""

    knob = "bits"
    order = 3
    after_folding = True

    def __init__(
        self,
        *,
        model: nn.Module,
        weight_bits: Sequence[int] = (2, 3, 4, 6, 8, FLOAT_BITS),
        act_bits: Sequence[int] = (8, FLOAT_BITS),
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
    ) -> None:
        self.weight_bits = _check_choices(list(weight_bits), ALLOWED_WEIGHT_BITS, "space.knobs.bits.weight_bits")
        self.act_bits = _check_choices(list(act_bits), ALLOWED_ACT_BITS, "space.knobs.bits.act_bits")
        super().__init__(model=model, include=include, exclude=exclude)

    def act_name(self, fqn: str) -> str:
        return f"abits.{fqn}"

    @property
    def identity_value(self) -> int:
        return FLOAT_BITS

    def uniform(self, value: int, act: int | None = None) -> dict[str, Any]:
        """Weights at ``value`` bits everywhere, activations at ``act`` (default: same rule as value)."""
        act = act if act is not None else (8 if value <= 8 else FLOAT_BITS)
        out = {}
        for fqn in self.layers:
            out[self.name(fqn)] = value
            out[self.act_name(fqn)] = act
        return out

    def check(self, value: Any, key: str) -> None:
        allowed = self.act_bits if key.startswith("abits.") else self.weight_bits
        if value not in allowed:
            raise ValueError(f"{key}: bit-width {value!r} is not among the choices {list(allowed)}")

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        out = {}
        for fqn in self.layers:
            out[self.name(fqn)] = trial.suggest_categorical(self.name(fqn), self.weight_bits)
            out[self.act_name(fqn)] = trial.suggest_categorical(self.act_name(fqn), self.act_bits)
        return out

    def values(self, params: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
        out = {}
        for fqn in self.layers:
            pair = []
            for key in (self.name(fqn), self.act_name(fqn)):
                if key not in params:
                    raise ValueError(f"params has no {key!r}; this space needs {self.identity()!r}")
                self.check(params[key], key)
                pair.append(int(params[key]))
            out[fqn] = tuple(pair)
        return out

    def apply(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        values = self.values(params)
        model = copy.deepcopy(model)
        for fqn, (wbits, abits) in values.items():
            if wbits >= FLOAT_BITS and abits >= FLOAT_BITS:
                continue
            for _, layer in targets(model, fqn):
                layer = compressed(layer)
                layer.wbits = wbits
                # Activations are quantized only where the weights are too: int8 kernels need both.
                layer.act = ActFakeQuant(abits) if abits < FLOAT_BITS and wbits <= 8 else None
        return model
