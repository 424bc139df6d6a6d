"""From the sensitivity table to configurations of the space: the anchors' baselines and the guided start.

**Anchors** (stored as baselines, named after what they re-implement; ``anchors.py`` cites each tool):

- ``aimet_amp_<b>bit``: AIMET's AMP-style greedy curve over the weight bit-widths from all-8-bit, taken at the
  byte saving of uniform b-bit weights; int8 inputs wherever weights are quantized (as AMP's 8-bit activations);
- ``modelopt_autoquant_<b>bit``: ModelOpt's AutoQuantize-style exact choice of one bit-width per layer under an
  effective-bits budget of b (weight-count-weighted mean), int8 inputs likewise;
- ``aimet_greedy_mac<p>``: AIMET's greedy compression-ratio selection over channel and rank ratios at p% of the
  model's MACs.

**Guided start**: the joint problem over all knobs of the space, per layer one option among the combinations of
the knobs' choices (the knobs of one phase exclusive), predicted from the table (accuracy losses add up; bytes
shrink multiplicatively per layer after channels, which also shrink the next layer; latency and MAC savings add
up), each layer's options cut to its own Pareto set, solved exactly (``knapsack.solve``: least predicted loss,
with a small prior against moving knobs and saving bytes the budget does not ask for) under size budgets spread
from large to tiny and latency targets, then perturbed (a few layers moved one choice). The sampler's start-up
trials are these configurations instead of random ones; the sampler refines from there.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from spaces import JointSpace, Phase

from .anchors import amp_curve, autoquantize, curve_points, greedy_ratio_selection
from .knapsack import nondominated_ranks, solve

SIZE_BUDGETS = (0.3, 0.15, 0.08, 0.04, 0.02)  # fractions of the unchanged model's packed bytes
LATENCY_TARGETS = (0.0, 0.35, 0.55)  # fractions of its latency the guided configurations must save
SAFE_LOSS = 0.01  # a choice losing more than this alone (1 point, before fine-tuning) is left out of the guided
# problem: summed losses under-predict what many such choices do together (all layers at 2 bits each "lost" at most
# 0.4 points alone on the default CNN, and together, after fine-tuning, 7 points)
REFINE = 3  # re-solves of an aimed budget whose exact size came out above it
TOUCH_LOSS = 0.0005  # predicted loss added per knob an option moves off its identity, and ...
BYTES_LOSS = 0.002   # ... per whole model's worth of bytes it saves: most choices measure a loss of 0 alone (on 500
# images one image is 0.2 points), so without these the exact solver meets a budget with every free choice at once and
# lands far below it (the first default run's guided trials: 15-28 KB aimed at baselines of 79-245 KB, all losing
# 0.3-1 point after fine-tuning). With them it saves what the budget asks and touches as few knobs as it can.


def smoothed(rows: pd.DataFrame, knob) -> pd.DataFrame:
    """A knob's entries on one layer with their latency savings made monotone in how hard the choice compresses
    (a running maximum from the mildest choice), never negative: single-layer deltas timed with a short protocol
    are noisy, and a harder choice never makes a layer slower in the runtimes here."""
    order = rows.sort_values("choice", ascending=knob.harder == "high")
    order = order.assign(ms_saved=order["ms_saved"].clip(lower=0).cummax())
    return order.sort_index()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _choice(knob, value: Any) -> Any:
    """A table value as the knob's own choice (the table stores every choice as a float)."""
    for c in knob.choices(knob.layers[0]):
        if math.isclose(float(c), float(value), rel_tol=0, abs_tol=1e-9):
            return c
    return _plain(value)


# --------------------------------------------------------------------------- anchors


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


# --------------------------------------------------------------------------- the joint problem


def layer_options(table: pd.DataFrame, space: JointSpace, layer: str, *, layer_bytes: float,
                  base_bytes: float | None = None) -> pd.DataFrame:
    """Every combination of the knobs' choices on one layer (one knob per phase), predicted from the table, cut to
    the layer's Pareto set of (loss, bytes, latency): columns ``option`` (a dict of parameters), ``loss``,
    ``bytes_saved``, ``ms_saved``. With ``base_bytes`` (the whole model's), the loss is the guided problem's: no
    entry below 0, plus ``TOUCH_LOSS`` per knob moved and ``BYTES_LOSS`` per ``base_bytes`` saved."""
    phases: dict[Phase, list[tuple[dict[str, Any], float, float, float, str]]] = {}
    identities: set[Phase] = set()
    for knob in space.knobs:
        if layer not in knob.layers:
            continue
        rows = smoothed(table[(table["knob"] == knob.knob) & (table["layer"] == layer)], knob)
        for r in rows.itertuples(index=False):
            if r.loss > SAFE_LOSS and not r.identity:
                continue
            value = _choice(knob, r.choice)
            loss = float(r.loss) if base_bytes is None else \
                max(0.0, float(r.loss)) + (TOUCH_LOSS if value != knob.identity_value else 0.0)
            entry = ({knob.name(layer): value}, loss, float(r.bytes_saved), float(r.ms_saved), knob.knob)
            if value == knob.identity_value:
                if knob.phase in identities:
                    continue  # one identity per phase is enough (two knobs of one phase share it)
                identities.add(knob.phase)
            phases.setdefault(knob.phase, []).append(entry)
    combos = []
    needs = {k.knob: k.sweep_context for k in space.knobs}
    for parts in itertools.product(*phases.values()):
        params: dict[str, Any] = {}
        loss = ms = 0.0
        keep, prune_saved = 1.0, 0.0
        acting = {knob for (p, *_, knob) in parts if any(v != space[knob].identity_value for v in p.values())}
        if any(knob in acting and not set(needs[knob]) <= acting for (*_, knob) in parts):
            continue  # e.g. 8-bit inputs on a layer whose weights stay float: the table's entry does not apply
        for (p, l, b, m, knob), phase in zip(parts, phases):
            params.update(p)
            loss, ms = loss + l, ms + m
            if phase == Phase.PRUNE:
                prune_saved = b
            else:
                keep *= min(1.0, max(0.0, 1.0 - b / layer_bytes))
        left = max(0.0, layer_bytes - min(prune_saved, layer_bytes))
        saved = prune_saved + left * (1 - keep)
        combos.append((params, loss + (BYTES_LOSS * saved / base_bytes if base_bytes else 0.0), saved, ms))
    frame = pd.DataFrame(combos, columns=["option", "loss", "bytes_saved", "ms_saved"])
    ranks = nondominated_ranks(frame[["loss", "bytes_saved", "ms_saved"]].to_numpy() * np.array([1, -1, -1]))
    return frame[ranks == 0].reset_index(drop=True)


def guided_configs(table: pd.DataFrame, space: JointSpace, *, layer_bytes: Mapping[str, float], base_bytes: float,
                   base_ms: float, n: int, perturbed: int, seed: int = 0,
                   targets: Sequence[tuple[float, float]] = (),
                   size_of: Callable[[dict[str, Any]], float] | None = None) -> list[dict[str, Any]]:
    """Up to ``n`` solutions of the joint problem, then ``perturbed`` copies of them with two layers moved one
    choice; complete params of the space, in a fixed order. The budgets: first ``targets`` ((fraction of the
    unchanged model's bytes, fraction of its latency) where the front already has a point, e.g. each baseline's,
    a little below both), then sizes spread from large to tiny at several latency targets. With ``size_of``
    (params -> the exact packed bytes, no training needed), a solution aimed at a target that comes out larger
    than it is solved again under a budget tightened by the shortfall, up to ``REFINE`` times: the table's
    per-layer savings do not add up exactly where channels removed from one layer also shrink the next."""
    layers = list(dict.fromkeys(f for k in space.knobs for f in k.layers))
    options = []
    for layer in layers:
        frame = layer_options(table, space, layer, layer_bytes=layer_bytes.get(layer, 1.0), base_bytes=base_bytes)
        frame["group"], frame["index"] = layer, range(len(frame))
        options.append(frame)
    if not options:
        return []
    problem = pd.concat(options, ignore_index=True)
    problem["bytes_left"] = -problem["bytes_saved"]
    problem["ms_left"] = -problem["ms_saved"]
    timed = bool(np.isfinite(base_ms)) and bool((problem["ms_saved"] != 0).any())
    spread = [(size, 1 - target) for target, size in itertools.product(LATENCY_TARGETS if timed else (0.0,),
                                                                         SIZE_BUDGETS)]
    aimed = [(size, latency if timed else 1.0) for size, latency in targets]
    solved: dict[str, list[dict[str, Any]]] = {"aimed": [], "missed": [], "spread": []}

    def solution(size: float, latency: float) -> dict[str, Any] | None:
        limits = {"bytes_left": -(1 - size) * base_bytes}
        if latency < 1:
            limits["ms_left"] = -(1 - latency) * base_ms
        try:
            chosen = solve(problem, group="group", option="index", minimize="loss", limits=limits)
        except ValueError:
            return None  # that budget is out of the table's reach
        params: dict[str, Any] = {}
        for layer, index in chosen.items():
            params.update(problem[(problem["group"] == layer) & (problem["index"] == index)]["option"].iloc[0])
        return space.with_values(knobs=params)

    for kind, budgets in (("aimed", aimed), ("spread", spread)):
        for size, latency in budgets:
            full, goal, where = solution(size, latency), size, kind
            for attempt in range(REFINE + 1 if size_of is not None and kind == "aimed" else 0):
                actual = size_of(full) / base_bytes if full is not None else 0.0
                if actual <= size:
                    break
                tighter = solution(goal * size / actual, latency) if attempt < REFINE else None
                if tighter is None:
                    where = "missed"  # still above its target: after the ones that met theirs
                    break
                goal *= size / actual  # the table's prediction was short: ask for that much less and solve again
                full = tighter
            if full is not None and not any(full in v for v in solved.values()):
                solved[where].append(full)
    found = (solved["aimed"] + solved["missed"])[:n]
    found += _spread(solved["spread"], n - len(found)) if n > len(found) else []
    rng = np.random.default_rng(seed)
    moved = [_perturb(space, found[i % len(found)], rng) for i in range(perturbed)] if found else []
    return found + [p for p in moved if p not in found]


def _spread(configs: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` of ``configs`` spread evenly over the order they were found in (budgets from large to tiny)."""
    if len(configs) <= n:
        return configs
    picks = np.unique(np.linspace(0, len(configs) - 1, n).round().astype(int))
    return [configs[i] for i in picks]


def _perturb(space: JointSpace, params: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """``params`` with two of its knob values moved one choice up or down."""
    out = dict(params)
    keys = [k for k in params if k.split(".", 1)[0] in {kn.knob for kn in space.knobs}]
    for key in rng.choice(keys, size=min(2, len(keys)), replace=False):
        knob = space[key.split(".", 1)[0]]
        choices = list(knob.choices(key.split(".", 1)[1]))
        i = choices.index(out[key]) if out[key] in choices else 0
        out[key] = choices[int(np.clip(i + rng.choice([-1, 1]), 0, len(choices) - 1))]
    return out
