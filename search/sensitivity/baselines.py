"""From the sensitivity table to baselines' configurations: the anchors' baselines, and a baseline a step smaller.

**Anchors** (stored as baselines, named after what they re-implement; ``anchors.py`` cites each tool):

- ``aimet_amp_<b>bit``: AIMET's AMP-style greedy curve over the weight bit-widths from all-8-bit, taken at the
  byte saving of uniform b-bit weights; int8 inputs wherever weights are quantized (as AMP's 8-bit activations);
- ``modelopt_autoquant_<b>bit``: ModelOpt's AutoQuantize-style exact choice of one bit-width per layer under an
  effective-bits budget of b (weight-count-weighted mean), int8 inputs likewise;
- ``aimet_greedy_mac<p>``: AIMET's greedy compression-ratio selection over channel and rank ratios at p% of the
  model's MACs.

**Refined baselines** (``refined``): a baseline's params made smaller where the graph ONNX Runtime runs stays the
same; the guided start runs them before its solved configurations (``plan.refinements``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from spaces import JointSpace

from .anchors import amp_curve, autoquantize, curve_points, greedy_ratio_selection
from .table import SAFE_LOSS, TOUCH_LOSS, _choice


def _with_int8_inputs(space: JointSpace, bits: Mapping[str, Any]) -> dict[str, Any]:
    overrides: dict[str, dict[str, Any]] = {"bits": {f"bits.{l}": _choice(space["bits"], b) for l, b in bits.items()}}
    if "abits" in space:
        overrides["abits"] = {f"abits.{l}": 8 for l, b in bits.items() if float(b) <= 8 and l in space["abits"].layers}
    return space.with_values(**overrides)


def anchor_policies(table: pd.DataFrame, space: JointSpace, *, weights: Mapping[str, int], base_macs: int,
                    bits: Sequence[int] = (4, 3), macs: Sequence[float] = (0.5,),
                    log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """{baseline name: params} of the anchors the space's knobs allow; one the table cannot reach is left out and
    said why."""
    out: dict[str, dict[str, Any]] = {}
    has_bits = "bits" in space and 8 in space["bits"].bits
    for b in bits if has_bits else ():
        rows = table[(table["knob"] == "bits") & (table["choice"] == b)]
        if rows.empty:
            continue
        try:
            curve = amp_curve(table, knob="bits", start=8, cost="bytes_saved")
            point = curve_points(curve, [float(rows["bytes_saved"].sum())])[0]
            out[f"aimet_amp_{b}bit"] = _with_int8_inputs(space, point["config"])
        except ValueError as exc:
            log(f"anchor aimet_amp_{b}bit left out: {exc}")
        try:
            chosen = autoquantize(table, knob="bits", weights=weights, effective_bits=float(b),
                                  choices=[c for c in space["bits"].bits if c <= 8])
            out[f"modelopt_autoquant_{b}bit"] = _with_int8_inputs(space, chosen)
        except ValueError as exc:
            log(f"anchor modelopt_autoquant_{b}bit left out: {exc}")
    knobs = [k for k in ("channels", "rank") if k in space]
    for fraction in macs if knobs else ():
        name = f"aimet_greedy_mac{round(fraction * 100)}"
        try:
            chosen = greedy_ratio_selection(table, knobs=knobs, target_macs=fraction * base_macs, base_macs=base_macs)
        except ValueError as exc:
            log(f"anchor {name} left out: {exc}")
            continue
        groups: dict[str, dict[str, Any]] = {}
        for key, value in chosen.items():
            knob = key.split(".", 1)[0]
            groups.setdefault(knob, {})[key] = _choice(space[knob], value)
        out[name] = space.with_values(**groups)
    return out


def refined(table: pd.DataFrame, space: JointSpace, params: Mapping[str, Any]) -> dict[str, Any] | None:
    """A baseline's ``params`` made smaller where the graph ONNX Runtime runs stays the same and the table says it
    costs least: every layer whose weights are float and whose inputs stay float gets 8-bit weights (weight-only:
    the layer still runs in float, from weights stored in 8 bits), where the table's 8-bit entry loses at most
    ``SAFE_LOSS``; where no layer is left so, the one layer that saves the most bytes per point lost moves one
    bit-width lower. None where the space has no ``bits`` knob or no step is left.

    Why: the quantized baselines of the default CNN keep the uncompressed model's accuracy (0.930-0.933 against
    0.931) and the guided trials aimed below them, built from scratch by the joint problem, lost 0.2-1 point once
    fine-tuned. The same configuration a step smaller, recovered with the same seed, kept it: on the default CNN's
    study of 835851a, ``channels_50`` with 8-bit weights 0.9274 against 0.9268 at 62,895 B against 244,034 and the
    same latency (1.39-1.47 ms against 1.44-1.47, timed together)."""
    if "bits" not in space:
        return None
    bits = space["bits"]
    others = [k for k in space.knobs if k.phase == bits.phase and k.knob != bits.knob]  # e.g. k-means: exclusive
    free = [f for f in bits.layers if all(params.get(k.name(f), k.identity_value) == k.identity_value for k in others)]
    rows = table[table["knob"] == bits.knob]

    def entry(layer: str, value: Any) -> pd.Series | None:
        hit = rows[(rows["layer"] == layer) & np.isclose(rows["choice"].astype(float), float(value))]
        return None if hit.empty else hit.iloc[0]

    out = dict(params)
    floats = []
    for f in free:
        float_inputs = "abits" not in space or f not in space["abits"].layers or \
            params.get(space["abits"].name(f)) == space["abits"].identity_value
        at8 = entry(f, 8)
        if params.get(bits.name(f)) == bits.identity_value and float_inputs and 8 in bits.choices(f) \
                and at8 is not None and float(at8["loss"]) <= SAFE_LOSS:
            floats.append(f)
    for f in floats:
        out[bits.name(f)] = _choice(bits, 8)
    if floats:
        return out
    steps = []  # (bytes saved per point lost, bytes saved, layer, lower bit-width)
    for f in free:
        now = params.get(bits.name(f))
        lower = [c for c in bits.choices(f) if now is not None and float(c) < float(now) <= 8]
        here, there = entry(f, now) if lower else None, entry(f, max(lower)) if lower else None
        if here is None or there is None or float(there["loss"]) > SAFE_LOSS:
            continue
        saved = float(there["bytes_saved"]) - float(here["bytes_saved"])
        lost = max(0.0, float(there["loss"]) - float(here["loss"]))
        if saved > 0:
            steps.append((saved / (lost + TOUCH_LOSS), saved, f, max(lower)))
    if not steps:
        return None
    _, _, layer, value = max(steps)
    out[bits.name(layer)] = _choice(bits, value)
    return out
