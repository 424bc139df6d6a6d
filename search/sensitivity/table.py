"""The sensitivity table read against a space, before anything is solved: a table value as the knob's own choice,
the thresholds and priors that decide which entries the guided problem trusts and what moving a knob costs in it, and
the corrections made to the table's single-layer entries before they are added up: latency savings made monotone
(``smoothed``), taken from MACs (``by_macs``) or scaled to what a knob saves timed whole (``timed_whole``), structural
losses scaled by what fine-tuning leaves of them (``recovery_factor``).

The table's columns are listed in the package's docstring; ``baselines`` and ``guide`` build on this module.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from spaces import JointSpace, Phase

SAFE_LOSS = 0.01  # a choice losing more than this alone (1 point, before fine-tuning) is left out of the guided
# problem: summed losses under-predict what many such choices do together (all layers at 2 bits each "lost" at most
# 0.4 points alone on the default CNN, and together, after fine-tuning, 7 points)
STRUCTURAL = (Phase.PRUNE, Phase.FACTORIZE, Phase.SPARSIFY)  # phases whose loss fine-tuning mostly recovers:
STRUCTURAL_SAFE_LOSS = 0.5  # on the default CNN half the channels of the first conv lose 17.6 points alone, untuned,
# and half the channels of every layer 0.5 points once fine-tuned (channels_50); their table losses are scaled by the
# factor the study's own structural baselines measure (``recovery_factor``), and only past 50 points alone left out.
# At 15 points (until 2026-12-02) the guided problem could not prune the first conv as channels_50 does, and no guided
# trial came near its latency (2.1-2.6 ms against 1.25, benchmark seed 0), while plain TPE's trials with 62-75% of the
# first and last convs' channels removed kept 0.91-0.92 at 1.3 ms
MIN_RECOVERED = 0.02  # the factor's floor: heavy pruning of several layers compounds more than their sum says
TOUCH_LOSS = 0.0005  # predicted loss added per knob an option moves off its identity, and ...
BYTES_LOSS = 0.002   # ... per whole model's worth of bytes it saves: most choices measure a loss of 0 alone (on 500
# images one image is 0.2 points), so without these the exact solver meets a budget with every free choice at once and
# lands far below it (the first default run's guided trials: 15-28 KB aimed at baselines of 79-245 KB, all losing
# 0.3-1 point after fine-tuning). With them it saves what the budget asks and touches as few knobs as it can.
SHAPING = (Phase.PRUNE, Phase.FACTORIZE)  # the phases that change layers' shapes (and the next layer's inputs)


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


def recovery_factor(table: pd.DataFrame, space: JointSpace, baselines: pd.DataFrame, *, accuracy: float) -> float:
    """How much of the table's summed loss fine-tuning leaves, measured on the study's baselines that change only
    structure (channels, rank, sparsity) with choices the table holds: their losses after recovery (``accuracy`` -
    theirs) summed, over their choices' table losses summed, in [``MIN_RECOVERED``, 1]; 1 when no such baseline is
    there to say. (On the default CNN: channels_50 loses 17.6 points in the table and 0.5 once fine-tuned, rank_50
    26 and 0.5: about 0.02.)"""
    lost = predicted = 0.0
    for _, row in baselines.iterrows():
        summed, moved_other = 0.0, False
        for knob in space.knobs:
            for layer in knob.layers:
                value = row.get(knob.name(layer))
                if value is None or value == "" or pd.isna(value) or float(value) == float(knob.identity_value):
                    continue
                if knob.phase not in STRUCTURAL:
                    moved_other = True
                    continue
                hit = table[(table["knob"] == knob.knob) & (table["layer"] == layer)
                            & np.isclose(table["choice"].astype(float), float(value))]
                if hit.empty:
                    moved_other = True  # a value the table does not hold (a global threshold's per-layer shares)
                    continue
                summed += float(hit["loss"].clip(lower=0).iloc[0])
        if not moved_other and summed > 0.005 and pd.notna(row.get("accuracy")):
            lost, predicted = lost + max(0.0, accuracy - float(row["accuracy"])), predicted + summed
    return float(np.clip(lost / predicted, MIN_RECOVERED, 1.0)) if predicted > 0 else 1.0


def by_macs(table: pd.DataFrame) -> pd.DataFrame:
    """The table with each entry that saves MACs saving that share of the unchanged model's latency. Single-layer
    deltas timed with the sweep's short protocol are noisy and their running maximum (``smoothed``) keeps the
    noise's peaks: on the default CNN the timed entries of a 62.5%-pruned third conv said 37% of the latency saved,
    the model timed whole 25%, its MACs 31%; half the channels of every conv: MACs 26% left, latency 27%."""
    identity = table[table["identity"].astype(bool)].iloc[0]
    base_ms, base_macs = float(identity["latency_ms"]), float(identity["macs"])
    if not (np.isfinite(base_ms) and base_macs > 0):
        return table
    share = table["macs_saved"].astype(float) / base_macs
    return table.assign(ms_saved=table["ms_saved"].where(share == 0, base_ms * share))


def timed_whole(table: pd.DataFrame, space: JointSpace, latency_of: Callable[[dict[str, Any]], float], *,
                base_ms: float) -> pd.DataFrame:
    """The table with each shaping knob's latency savings scaled by what its middle choice on every layer at once
    saves when timed whole (``latency_of``) over what the table's entries add up to, in [0.2, 1]. Factorizing a
    layer adds one: on the default CNN rank 0.5 on every layer leaves 61% of the MACs and 74% of the latency, while
    half the channels leave 26% and 27%."""
    out = table.copy()
    for knob in space.knobs:
        if knob.phase not in SHAPING:
            continue
        rows = table[(table["knob"] == knob.knob) & ~table["identity"].astype(bool)]
        if rows.empty:
            continue
        choices = sorted(rows["choice"].unique())
        middle = choices[len(choices) // 2]
        at = rows[np.isclose(rows["choice"].astype(float), float(middle))]
        predicted = float(at["ms_saved"].clip(lower=0).sum())
        if predicted <= 0:
            continue
        actual = (1.0 - latency_of(space.with_values(knobs={knob.name(l): _choice(knob, middle) for l in at["layer"]})))
        factor = float(np.clip(actual * base_ms / predicted, 0.2, 1.0))
        mine = out["knob"] == knob.knob
        out.loc[mine, "ms_saved"] = out.loc[mine, "ms_saved"] * factor
    return out
