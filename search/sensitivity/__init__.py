"""Pure functions over a per-layer sensitivity table: exact budgeted choice and the tools' heuristics.

The table has one row per (knob, layer, choice), each the model with that one layer changed alone:
``knob``, ``layer``, ``choice``, ``identity``, ``accuracy``, ``loss``, ``bytes``, ``bytes_saved``,
``latency_ms``, ``ms_saved``, ``macs``, ``macs_saved``. Nothing here imports torch or the rest of the project.
"""
from __future__ import annotations

from search.sensitivity.anchors import amp_curve, autoquantize, curve_points, greedy_ratio_selection
from search.sensitivity.solve import MAX_COMBINATIONS, brute_force, nondominated_ranks, solve

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
