"""The guided start: configurations of the space solved from the sensitivity table.

The joint problem over all knobs of the space, per layer one option among the combinations of
the knobs' choices (the knobs of one phase exclusive), predicted from the table (accuracy losses add up; bytes
shrink multiplicatively per layer after channels, which also shrink the next layer; latency and MAC savings add
up), each layer's options cut to its own Pareto set, solved exactly (``knapsack.solve``: least predicted loss,
with a small prior against moving knobs and saving bytes the budget does not ask for) under size budgets spread
from large to tiny and latency targets, then perturbed (a few layers moved one choice). The sampler's start-up
trials are these configurations instead of random ones; the sampler refines from there.

How the table's entries are read and corrected is in ``table``; the anchors' baselines and the refined ones are in
``baselines``.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from spaces import JointSpace, Phase

from .knapsack import nondominated_ranks, solve
from .table import (
    BYTES_LOSS, SAFE_LOSS, SHAPING, STRUCTURAL, STRUCTURAL_SAFE_LOSS, TOUCH_LOSS, _choice, by_macs, smoothed, timed_whole)

SIZE_BUDGETS = (0.3, 0.15, 0.08, 0.04, 0.02)  # fractions of the unchanged model's packed bytes
LATENCY_TARGETS = (0.0, 0.35, 0.55)  # fractions of its latency the guided configurations must save
REFINE = 3  # re-solves of an aimed budget whose exact size came out above it


def layer_options(table: pd.DataFrame, space: JointSpace, layer: str, *, layer_bytes: float,
                  base_bytes: float | None = None, recovered: float = 1.0) -> pd.DataFrame:
    """Every combination of the knobs' choices on one layer (one knob per phase), predicted from the table, cut to
    the layer's Pareto set of (loss, bytes, latency): columns ``option`` (a dict of parameters), ``loss``,
    ``bytes_saved``, ``ms_saved``. With ``base_bytes`` (the whole model's), the loss is the guided problem's: no
    entry below 0, plus ``TOUCH_LOSS`` per knob moved and ``BYTES_LOSS`` per ``base_bytes`` saved. With
    ``recovered`` < 1, a structural knob's losses are scaled by it and left out only past ``STRUCTURAL_SAFE_LOSS``."""
    phases: dict[Phase, list[tuple[dict[str, Any], float, float, float, str]]] = {}
    identities: set[Phase] = set()
    for knob in space.knobs:
        if layer not in knob.layers:
            continue
        rows = smoothed(table[(table["knob"] == knob.knob) & (table["layer"] == layer)], knob)
        structural = recovered < 1 and knob.phase in STRUCTURAL
        for r in rows.itertuples(index=False):
            if r.loss > (STRUCTURAL_SAFE_LOSS if structural else SAFE_LOSS) and not r.identity:
                continue
            value = _choice(knob, r.choice)
            loss = float(r.loss) * (recovered if structural else 1.0)
            loss = loss if base_bytes is None else \
                max(0.0, loss) + (TOUCH_LOSS if value != knob.identity_value else 0.0)
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
        keep, prune_saved, left = 1.0, 0.0, layer_bytes
        acting = {knob for (p, *_, knob) in parts if any(v != space[knob].identity_value for v in p.values())}
        if any(knob in acting and not set(needs[knob]) <= acting for (*_, knob) in parts):
            continue  # e.g. 8-bit inputs on a layer whose weights stay float: the table's entry does not apply
        for (p, l, b, m, knob), phase in zip(parts, phases):
            params.update(p)
            loss, ms = loss + l, max(ms, m)  # two phases' savings on one layer overlap (channels removed from a
            # factorized layer save little more than either alone): the larger, not the sum
            if phase == Phase.PRUNE:
                prune_saved = b
                left = _left_after_pruning(space[knob], p, layer_bytes, b)
            else:
                keep *= min(1.0, max(0.0, 1.0 - b / layer_bytes))
        saved = prune_saved + left * (1 - keep)
        combos.append((params, loss + (BYTES_LOSS * saved / base_bytes if base_bytes else 0.0), saved, ms))
    frame = pd.DataFrame(combos, columns=["option", "loss", "bytes_saved", "ms_saved"])
    ranks = nondominated_ranks(frame[["loss", "bytes_saved", "ms_saved"]].to_numpy() * np.array([1, -1, -1]))
    return frame[ranks == 0].reset_index(drop=True)


def _left_after_pruning(knob, params: Mapping[str, Any], layer_bytes: float, saved: float) -> float:
    """What is left of a layer's own bytes after a pruning choice: for a knob whose value is the fraction removed
    (channels), that fraction of the layer; otherwise the table's whole-model saving taken from the layer. (The
    table's saving also counts the next layer's inputs removed: taken from this layer alone it left nothing for
    quantization to shrink, and the solver never combined pruning with fewer bits.)"""
    value = next(iter(params.values()))
    if knob.scale == "fraction" and knob.harder == "high":
        return layer_bytes * (1.0 - float(value))
    return max(0.0, layer_bytes - min(saved, layer_bytes))



def _phase(space: JointSpace, key: str) -> Phase | None:
    name = key.split(".", 1)[0]
    return space[name].phase if name in space else None


def cover_order(aims: Sequence[tuple[float, float, float]], *, tolerance: float) -> list[int]:
    """The indices of ``aims`` ((size, latency, accuracy) of the baselines a budget is aimed below) in the order of a
    greedy set cover: next, the budget whose configuration, if it keeps about the accuracy of its own baseline,
    would weakly dominate the most baselines not yet dominated (at most as large and as slow, at most ``tolerance``
    more accurate); ties to the one that would dominate more in all, then the first."""
    covers = [{j for j, u in enumerate(aims) if a[0] <= u[0] and a[1] <= u[1] and u[2] <= a[2] + tolerance}
              for a in aims]
    order: list[int] = []
    covered: set[int] = set()
    left = list(range(len(aims)))
    while left:
        best = max(left, key=lambda i: (len(covers[i] - covered), len(covers[i]), -i))
        order.append(best)
        covered |= covers[best]
        left.remove(best)
    return order


def guided_configs(table: pd.DataFrame, space: JointSpace, *, layer_bytes: Mapping[str, float], base_bytes: float,
                   base_ms: float, n: int, perturbed: int, seed: int = 0,
                   targets: Sequence[tuple[float, float]] = (),
                   size_of: Callable[[dict[str, Any]], float] | None = None,
                   latency_of: Callable[[dict[str, Any]], float] | None = None,
                   weights_of: Callable[[dict[str, Any]], Mapping[str, float]] | None = None,
                   recovered: float = 1.0, ms_from_macs: bool = False) -> list[dict[str, Any]]:
    """Up to ``n`` solutions of the joint problem, then ``perturbed`` copies of them with two layers moved one
    choice; complete params of the space, in a fixed order. The budgets: first ``targets`` ((fraction of the
    unchanged model's bytes, fraction of its latency) where the front already has a point, e.g. each baseline's,
    a little below both), then sizes spread from large to tiny at several latency targets.

    An aimed solution is checked, without training, and solved again where the table's additive prediction fell
    short (up to ``REFINE`` times):

    - with ``weights_of`` (params -> {layer: weights} of the model shaped by their pruning and factorization) and
      ``size_of`` (params -> exact packed bytes), its shape is kept and the other phases (sparsity, bit-widths) are
      solved again on that shape's real layer sizes to meet the size exactly: the table's savings are each taken
      from the whole layer, so pruning one layer and quantizing the next counts the next one's removed inputs twice;
    - with ``size_of`` alone, a solution that comes out larger is solved again under a budget tightened by the
      shortfall;
    - with ``latency_of`` (params -> latency as a fraction of the unchanged model's, timed or predicted on the
      untrained structure): single-layer latency savings add up to more than they save together (half the channels
      of each conv of the default CNN save 90% of its latency in the table, 73% timed whole), so a solution that
      comes out slower is solved again under a latency budget tightened likewise.

    ``recovered``: the share of a structural choice's table loss left after fine-tuning (``recovery_factor``).
    ``ms_from_macs``: the table's timed latency savings replaced by the unchanged model's latency times the share of
    its MACs an entry saves, where it saves MACs (``by_macs``)."""
    if ms_from_macs:
        table = by_macs(table)
    if latency_of is not None and np.isfinite(base_ms):
        table = timed_whole(table, space, latency_of, base_ms=base_ms)
    layers = list(dict.fromkeys(f for k in space.knobs for f in k.layers))
    options = []
    for layer in layers:
        frame = layer_options(table, space, layer, layer_bytes=layer_bytes.get(layer, 1.0), base_bytes=base_bytes,
                              recovered=recovered)
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
    solved: dict[str, list[dict[str, Any]]] = {"aimed": [], "spread": []}
    shaping = {k.knob for k in space.knobs if k.phase in SHAPING}

    predicted: dict[str, tuple[float, float]] = {}  # solution -> (its size, its latency) as the table predicts

    def chosen(frame: pd.DataFrame, limits: dict[str, float]) -> dict[str, Any] | None:
        try:
            picks = solve(frame, group="group", option="index", minimize="loss", limits=limits)
        except ValueError:
            return None  # that budget is out of the table's reach
        rows = pd.concat([frame[(frame["group"] == layer) & (frame["index"] == index)] for layer, index in picks.items()])
        params: dict[str, Any] = {}
        for option in rows["option"]:
            params.update(option)
        predicted[repr(sorted(params.items()))] = (1 - rows["bytes_saved"].sum() / base_bytes,
                                                   1 - rows["ms_saved"].sum() / base_ms if timed else 1.0)
        return params

    def solution(size: float, latency: float) -> dict[str, Any] | None:
        limits = {"bytes_left": -(1 - size) * base_bytes}
        if latency < 1:
            limits["ms_left"] = -(1 - latency) * base_ms
        params = chosen(problem, limits)
        if params is None:
            return None
        full = space.with_values(knobs=params)
        predicted[repr(sorted(full.items()))] = predicted[repr(sorted(params.items()))]
        return full

    def completed(params: dict[str, Any], size: float) -> dict[str, Any] | None:
        """``params``' shape kept, the other phases solved again on its layers' real sizes to meet ``size``."""
        shape = space.with_values(knobs={k: v for k, v in params.items()
                                         if _phase(space, k) in SHAPING and v != space[k.split(".", 1)[0]].identity_value})
        counts, shaped = weights_of(shape), size_of(shape)
        rest = table[~table["knob"].isin(shaping)]
        frames = []
        for layer in layers:
            ratio = 4.0 * float(counts.get(layer, 0)) / layer_bytes.get(layer, 1.0) if layer in counts else 1.0
            rows = rest[rest["layer"] == layer].assign(bytes_saved=lambda d: d["bytes_saved"] * ratio)
            frame = layer_options(rows, space, layer, layer_bytes=layer_bytes.get(layer, 1.0) * ratio,
                                  base_bytes=base_bytes, recovered=recovered)
            frame["group"], frame["index"] = layer, range(len(frame))
            frames.append(frame)
        stage = pd.concat(frames, ignore_index=True).assign(bytes_left=lambda d: -d["bytes_saved"])
        goal = size * base_bytes
        for _ in range(REFINE + 1):
            params = chosen(stage, {"bytes_left": -(shaped - goal)})
            if params is None:
                return None
            full = space.with_values(knobs={k: v for k, v in {**shape, **params}.items() if _phase(space, k) is not None})
            actual = size_of(full)
            if actual <= size * base_bytes:
                return full
            goal -= actual - size * base_bytes  # short by that much: ask for it too
        return None

    for kind, budgets in (("aimed", aimed), ("spread", spread)):
        for size, latency in budgets:
            if kind == "aimed" and len(solved["aimed"]) >= n:
                break  # enough: each check below costs a packing and a timing
            full, where = solution(size, latency), kind
            goal, goal_ms = predicted.get(repr(sorted(full.items())), (size, latency)) if full else (size, latency)
            checks = REFINE + 1 if kind == "aimed" and (size_of is not None or latency_of is not None) else 0
            closest, excess = full, math.inf  # the attempt nearest its target, should none meet it
            for attempt in range(checks):
                if full is None:
                    break
                goal, goal_ms = predicted.get(repr(sorted(full.items())), (goal, goal_ms))
                if weights_of is not None and size_of is not None:
                    full = completed(full, size) or full
                actual = size_of(full) / base_bytes if size_of is not None else 0.0
                actual_ms = latency_of(full) if latency_of is not None and latency < 1 else 0.0
                over = max(actual / size, actual_ms / latency if latency < 1 else 0.0)
                if over < excess:
                    closest, excess = full, over
                if over <= 1:
                    break
                # the table predicted (goal, goal_ms) and it came out (actual, actual_ms): ask for that much less
                goal *= min(1.0, size / actual) if actual > 0 else 1.0
                goal_ms *= min(1.0, latency / actual_ms) if actual_ms > 0 else 1.0
                full = solution(goal, goal_ms) if attempt < REFINE else None
            full = closest  # met, or as near as the table's reach allowed
            if full is not None and not any(full in v for v in solved.values()):
                solved[where].append(full)
    found = solved["aimed"][:n]
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
