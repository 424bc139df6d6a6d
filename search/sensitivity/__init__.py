"""Pure functions over a per-layer sensitivity table: exact budgeted choice and the tools' heuristics.

The table has one row per (knob, layer, choice), each the model with that one layer changed alone:
``knob``, ``layer``, ``choice``, ``identity``, ``accuracy``, ``loss``, ``bytes``, ``bytes_saved``,
``latency_ms``, ``ms_saved``, ``macs``, ``macs_saved``. The solvers and the anchors (``knapsack``, ``anchors``)
import nothing of torch or the rest of the project; ``sweep`` measures the table, ``table`` reads it against a
space, ``baselines`` turns it into the anchors' baselines and ``guide`` into the guided start, and ``plan`` is what
a search does with them (import them from their modules).
"""
from __future__ import annotations

from .anchors import amp_curve, autoquantize, curve_points, greedy_ratio_selection
from .knapsack import MAX_COMBINATIONS, brute_force, nondominated_ranks, solve

__all__ = [
    "MAX_COMBINATIONS",
    "amp_curve",
    "autoquantize",
    "brute_force",
    "curve_points",
    "greedy_ratio_selection",
    "nondominated_ranks",
    "solve",
]
