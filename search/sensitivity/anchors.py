"""What the tools users know would choose, re-implemented over the sensitivity table.

Each function reads the per-layer table (one row per knob, layer and choice, measured with that layer
changed alone) and returns a configuration, so the search can be compared with these anchors on one budget.
All three assume the table's per-layer effects add up: the predicted loss of a configuration is the sum of
its layers' losses, its predicted saving the sum of their savings; nothing is re-measured here.

- ``amp_curve``: AIMET Automatic Mixed Precision, phase 2 (the Pareto curve).
- ``autoquantize``: NVIDIA ModelOpt ``mtq.auto_quantize`` with its ``effective_bits`` constraint.
- ``greedy_ratio_selection``: AIMET Greedy Compression Ratio Selection (channel pruning, spatial SVD).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .knapsack import _finite_number, solve


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds."""
    return value.item() if isinstance(value, np.generic) else value


def _knob_rows(table: pd.DataFrame, knob: str, columns: Sequence[str]) -> pd.DataFrame:
    """The rows of one knob, checked: the columns exist and each (layer, choice) appears once."""
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in ("knob", "layer", "choice", *columns) if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks the columns {missing}; it has {list(table.columns)}")
    rows = table[table["knob"] == knob]
    if rows.empty:
        raise ValueError(f"knob must be one of the table's knobs {sorted(table['knob'].unique())}, got {knob!r}")
    duplicated = rows.duplicated(["layer", "choice"])
    if duplicated.any():
        layer, choice = rows.loc[duplicated, "layer"].tolist()[0], rows.loc[duplicated, "choice"].tolist()[0]
        raise ValueError(f"table has {knob} choice {choice!r} of layer {layer!r} more than once")
    return rows


# --------------------------------------------------------------------------- AIMET AMP, phase 2

def _ladders(rows: pd.DataFrame, start: float, cost: str) -> dict[str, list[tuple[Any, float, float]]]:
    """Per layer, (choice, loss, saving) at ``start`` then at each lower non-identity choice, highest first."""
    ladders, missing = {}, []
    for layer, frame in rows.groupby("layer", sort=True):
        top = frame[frame["choice"] == start]
        if top.empty:
            missing.append(layer)
            continue
        lower = frame[(frame["choice"] < start) & ~frame["identity"].astype(bool)]
        steps = pd.concat([top, lower.sort_values("choice", ascending=False)])
        ladders[layer] = list(zip(steps["choice"].tolist(), steps["loss"].astype(float).tolist(),
                                  steps[cost].astype(float).tolist()))
    if missing:
        raise ValueError(f"start={start!r} is not a choice of every layer: layers {missing} lack it")
    return ladders


def _move_key(layer: str, current: tuple[Any, float, float], following: tuple[Any, float, float]) -> tuple:
    """Order of moves: least extra loss per unit of extra saving; moves that save nothing come last."""
    extra_loss, extra_saving = following[1] - current[1], following[2] - current[2]
    if extra_saving > 0:
        return (0, extra_loss / extra_saving, layer)
    return (1, extra_loss, layer)


def _point(step: int, moved: str | None, ladders: Mapping, position: Mapping[str, int]) -> dict[str, Any]:
    at = {layer: ladder[position[layer]] for layer, ladder in ladders.items()}
    return {"step": step, "layer": moved, "choice": at[moved][0] if moved else None,
            "config": {layer: entry[0] for layer, entry in at.items()},
            "predicted_loss": sum(entry[1] for entry in at.values()),
            "predicted_saved": sum(entry[2] for entry in at.values())}


def amp_curve(table: pd.DataFrame, *, knob: str = "bits", start: float = 8,
              cost: str = "bytes_saved") -> pd.DataFrame:
    """The accuracy-cost curve of AIMET's Automatic Mixed Precision (AMP), phase 2, from the table.

    Every layer of ``knob`` starts at ``start``; each step moves one layer to its next lower choice (identity
    choices, such as float, excluded), the move with the least increase of predicted loss per unit of extra
    predicted ``cost`` saved (ties: the layer name), until every layer is at its lowest choice.
    Returns one row per point: ``step`` (0 = start, no layer moved), the moved ``layer`` and its ``choice``,
    the whole ``config`` {layer: choice}, ``predicted_loss`` and ``predicted_saved``; ``attrs["cost"]`` names
    the cost.

    Source: AIMET's user guide, "Automatic mixed precision" (qualcomm/aimet, ``Docs/featureguide/mixed
    precision/amp.rst``, published at quic.github.io/aimet-pages): phase 1 measures each layer group's
    accuracy at each lower candidate, phase 2 builds a Pareto list of (relative bit-ops, accuracy) by
    lowering groups one after another, phase 3 trims convert-op overhead. Where ours differs:

    - AIMET orders its moves by the phase-1 accuracy alone (``sort_accuracy_list`` in
      ``aimet_common/amp/utils.py``: highest accuracy first); ours divides the loss by the saving, so
      layers that save more per unit of loss go first.
    - AIMET evaluates the model at each curve point it visits (binary search for an allowed accuracy drop);
      ours predicts loss and saving by summing the table, and re-evaluates nothing.
    - AIMET's cost is bit-ops (MACs x weight bits x activation bits); ours any saving column of the table.
    - No phase 3 (convert-op reduction).
    """
    if cost not in getattr(table, "columns", ()):
        raise ValueError(f"cost must name a saving column of table, such as 'bytes_saved', got {cost!r}")
    rows = _knob_rows(table, knob, ("identity", "loss", cost))
    ladders = _ladders(rows, start, cost)
    position = dict.fromkeys(ladders, 0)
    points = [_point(0, None, ladders, position)]
    while True:
        moves = [_move_key(layer, ladder[position[layer]], ladder[position[layer] + 1])
                 for layer, ladder in ladders.items() if position[layer] + 1 < len(ladder)]
        if not moves:
            break
        moved = min(moves)[2]
        position[moved] += 1
        points.append(_point(len(points), moved, ladders, position))
    curve = pd.DataFrame(points)
    curve.attrs["cost"] = cost
    return curve


def curve_points(curve: pd.DataFrame, budgets: Iterable[float]) -> list[dict[str, Any]]:
    """For each budget (a saving to reach), the first point of ``amp_curve``'s curve whose predicted saving
    reaches it, as a dict with the budget added. A budget beyond the curve raises ValueError."""
    if "predicted_saved" not in getattr(curve, "columns", ()):
        raise ValueError("curve must be a frame from amp_curve, with a 'predicted_saved' column")
    points = []
    for budget in budgets:
        if not _finite_number(budget):
            raise ValueError(f"budgets must be finite numbers, got {budget!r}")
        reached = curve[curve["predicted_saved"] >= budget]
        if reached.empty:
            raise ValueError(f"budget {budget:g} is beyond the curve: its largest predicted saving is "
                             f"{curve['predicted_saved'].max():g}")
        points.append({**{k: _plain(v) for k, v in reached.iloc[0].items()}, "budget": budget})
    return points


# --------------------------------------------------------------------------- ModelOpt AutoQuantize

def _check_weights(weights: Mapping[str, int], layers: list[str], knob: str) -> None:
    missing = sorted(set(layers) - set(weights))
    unknown = sorted(set(weights) - set(layers))
    if missing or unknown:
        raise ValueError(f"weights must give the weight count of each {knob} layer of the table: "
                         f"missing {missing}, not in the table {unknown}")
    bad = {layer: w for layer, w in weights.items() if not _finite_number(w) or w <= 0}
    if bad:
        raise ValueError(f"weights must be positive numbers, got {bad}")


def autoquantize(table: pd.DataFrame, *, knob: str = "bits", weights: Mapping[str, int],
                 effective_bits: float, choices: Sequence[int] | None = None) -> dict[str, int]:
    """One bit-width per layer minimising the summed table loss, with the weight-count-weighted mean
    bit-width at most ``effective_bits``; exact (``solve``). ``choices`` limits the bit-widths (default: all
    the table has for ``knob``, its identity, float, included). Returns {layer: bits}.

    Source: NVIDIA ModelOpt ``mtq.auto_quantize`` (nvidia.github.io/Model-Optimizer, reference
    ``modelopt.torch.quantization.model_quant.auto_quantize`` and ``...algorithms.AutoQuantizeGradientSearcher``):
    it "minimizes the sum of per-layer scores while meeting the specified constraint", the constraint being
    ``constraints={"effective_bits": ...}``, with a linear-programming solver. Where ours differs:

    - ModelOpt's score is a Taylor estimate of the loss change (Fisher information for the Hessian, or a
      KL divergence); ours is the measured accuracy drop of the table, one layer changed at a time.
    - ModelOpt always offers "do not quantize" and counts it as 16 bits (its models are 16-bit; a format's
      effective bits are 16 x its compression); ours counts the identity choice at its table value (32).
    - ModelOpt groups layers that must share a format (q/k/v projections); ours chooses per layer.
    """
    rows = _knob_rows(table, knob, ("loss",))
    layers = sorted(rows["layer"].unique())
    _check_weights(weights, layers, knob)
    if not _finite_number(effective_bits):
        raise ValueError(f"effective_bits must be a finite number, got {effective_bits!r}")
    if choices is not None:
        rows = rows[rows["choice"].isin(list(choices))]
        lacking = sorted(set(layers) - set(rows["layer"]))
        if lacking:
            raise ValueError(f"choices={list(choices)} leaves layers {lacking} without any {knob} choice")
    if not all(float(c).is_integer() for c in rows["choice"]):
        raise ValueError(f"{knob} choices must be whole bit-widths, got {sorted(rows['choice'].unique())}")
    total = float(sum(weights.values()))
    smallest = sum(weights[layer] * rows.loc[rows["layer"] == layer, "choice"].min() for layer in layers) / total
    if effective_bits < smallest:
        raise ValueError(f"effective_bits must be at least {smallest:g}, the weighted mean of each layer's "
                         f"smallest {knob} choice, got {effective_bits!r}")
    options = pd.DataFrame({"group": rows["layer"], "option": rows["choice"], "loss": rows["loss"],
                            "weighted_bits": rows["choice"] * rows["layer"].map(dict(weights))})
    chosen = solve(options, minimize="loss", limits={"weighted_bits": effective_bits * total})
    return {layer: int(choice) for layer, choice in chosen.items()}


# --------------------------------------------------------------------------- AIMET greedy ratio selection

def _candidates(table: pd.DataFrame, knobs: Sequence[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The non-identity rows of ``knobs`` in preference order, and the identity parameters {knob.layer: choice}."""
    frames = [_knob_rows(table, knob, ("identity", "accuracy", "macs_saved")).assign(knob_order=k)
              for k, knob in enumerate(knobs)]
    rows = pd.concat(frames, ignore_index=True)
    identity = rows["identity"].astype(bool)
    params = {f"{r.knob}.{r.layer}": _plain(r.choice) for r in rows[identity].itertuples()}
    lacking = sorted({f"{r.knob}.{r.layer}" for r in rows.itertuples()} - set(params))
    if lacking:
        raise ValueError(f"table needs an identity row for each knob and layer; {lacking} have none")
    ranked = rows[~identity].sort_values(["macs_saved", "accuracy", "knob_order", "choice"],
                                         ascending=[False, False, True, True], kind="stable")
    return ranked, params


def _at_threshold(ranked: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per layer, the most compressing candidate with accuracy >= threshold that saves something."""
    eligible = ranked[(ranked["accuracy"] >= threshold) & (ranked["macs_saved"] > 0)]
    return eligible.drop_duplicates("layer")


def greedy_ratio_selection(table: pd.DataFrame, *, knobs: Sequence[str] = ("channels",), target_macs: float,
                           base_macs: int) -> dict[str, float]:
    """Per-layer compression by AIMET's Greedy Compression Ratio Selection, from the table.

    For an accuracy threshold t every layer takes its most compressing candidate (largest ``macs_saved``;
    ties: higher accuracy, then the order of ``knobs``) whose table accuracy is at least t, or stays unchanged;
    a binary search over the table's distinct accuracies finds the highest t whose predicted MACs
    (``base_macs`` minus the summed savings) are at most ``target_macs``. With several knobs each layer takes
    one candidate among all of them. Returns {"knob.layer": choice} for every knob and layer of the table,
    identity choices included, so it is a complete parameter set.

    Source: AIMET's user guide, "AIMET Greedy Compression Ratio Selection" (quic/aimet,
    ``Docs/user_guide/greedy_compression_ratio_selection.rst``) and ``aimet_common/comp_ratio_select.py``:
    per-layer exploration (model accuracy with one layer compressed at each candidate ratio), then a binary
    search on a common accuracy for the per-layer ratios that meet the target compression. Where ours differs:

    - AIMET bisects a continuous score until the window is 1e-4 of the score range and interpolates between
      candidate ratios; ours searches the distinct measured accuracies and takes table choices only.
    - AIMET walks each layer's candidates from least to most compressed and stops at the first one below
      the threshold; ours takes the most compressing candidate above it anywhere (the same when accuracy
      falls monotonically with compression).
    - AIMET computes the compressed model's cost with its cost calculator; ours sums the per-layer savings
      of the table, which ignores interactions (pruning a layer's outputs also shrinks the next layer).
    - AIMET's target is a ratio of the original cost (MACs or memory); ours an absolute MAC count.
    """
    if isinstance(knobs, str) or not knobs:
        raise ValueError(f"knobs must be a non-empty sequence of knob names, got {knobs!r}")
    for key, value in (("target_macs", target_macs), ("base_macs", base_macs)):
        if not _finite_number(value) or value < 0:
            raise ValueError(f"{key} must be a number >= 0, got {value!r}")
    ranked, params = _candidates(table, knobs)
    if base_macs <= target_macs:
        return params

    def macs(threshold: float) -> float:
        return base_macs - float(_at_threshold(ranked, threshold)["macs_saved"].sum())

    thresholds = np.unique(ranked["accuracy"].to_numpy(dtype=float))  # ascending
    if not len(thresholds) or macs(thresholds[0]) > target_macs:
        lowest = macs(thresholds[0]) if len(thresholds) else base_macs
        raise ValueError(f"target_macs={target_macs:g} cannot be met: the most compressing choices of "
                         f"{list(knobs)} leave {lowest:g} MACs (predicted)")
    low, high = 0, len(thresholds) - 1  # macs(thresholds[low]) meets the target; find the highest that does
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if macs(thresholds[middle]) <= target_macs else (low, middle - 1)
    for r in _at_threshold(ranked, thresholds[low]).itertuples():
        params[f"{r.knob}.{r.layer}"] = _plain(r.choice)
    return params
