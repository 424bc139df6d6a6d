"""The Pareto front of a trials frame and its hypervolume, for whatever objectives the study has.

Objectives are read by name, never by position: a frame's objective columns are those between ``state`` and
``baseline`` (``outputs.trials_frame`` writes them there, in the study's order), and each name's direction and
scale come from its class in ``objectives`` (``BaseObjective.registry``).

Hypervolume. Each objective is brought to minimisation on one scale: a *relative* objective (size, latency,
MACs) is divided by the study's ``uncompressed`` baseline value (or, in a study without one, the largest
completed value), an *absolute* one (accuracy, a fraction) is negated. The reference point is fixed: **1.1 x the
uncompressed value** for each relative objective, **0** for each absolute one. The hypervolume is reported as
the share of the box between the ideal point (0 for relative objectives, -1 for absolute ones) and the reference
point that the feasible completed trials dominate: 0 is nothing, 1 a perfect model of zero bytes and zero
milliseconds. A trial past the reference adds nothing.

Studies compared in one report keep each its own reference: latency is then measured against the uncompressed
model timed in the same run, which cancels the drift of a shared machine between runs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from objectives import BaseObjective, objective_class

from ..storage._optuna import compute_hypervolume

TOLERANCE = {"accuracy": 0.001}  # a searched trial dominates a baseline at up to 0.1 point less accuracy
MARGIN = 1.1  # reference point = 1.1 x the uncompressed model's value of each relative objective
FIRST = ("number", "state")  # columns before the objectives in a trials frame; "baseline" comes after them


def objective_names(df: pd.DataFrame | pd.Series) -> list[str]:
    """The objective columns of a trials frame (or of a ``trials.csv`` read back, or one row), in the study's
    order."""
    columns = [str(c) for c in (df.columns if isinstance(df, pd.DataFrame) else df.index)]
    if "baseline" not in columns or columns[: len(FIRST)] != list(FIRST):
        raise ValueError(f"not a trials frame: columns start {columns[:4]}, expected number, state, <objectives>, "
                         "baseline")
    return columns[len(FIRST): columns.index("baseline")]


def specs(names: Sequence[str]) -> list[type[BaseObjective]]:
    return [objective_class(n, key="study objectives") for n in names]


def signs(names: Sequence[str]) -> np.ndarray:
    """-1 for a maximised objective, +1 for a minimised one: ``values * signs`` is all-minimisation."""
    return np.array([-1.0 if s.direction == "maximize" else 1.0 for s in specs(names)])


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Non-dominated rows of ``points``, every column minimised."""
    keep = np.ones(len(points), dtype=bool)
    for i, p in enumerate(points):
        dominated = np.all(points <= p, axis=1) & np.any(points < p, axis=1)
        keep[i] = not dominated.any()
    return keep


def done(df: pd.DataFrame) -> pd.DataFrame:
    """Feasible COMPLETE trials with finite values: what fronts and hypervolumes are made of."""
    if df.empty:
        return df
    names = objective_names(df)
    ok = (df["state"] == "COMPLETE") & df["feasible"].astype(bool)
    ok &= np.isfinite(df[names].apply(pd.to_numeric, errors="coerce").to_numpy(float)).all(axis=1)
    if "fidelity" in df.columns:  # screened-only trials never make the front (multi-fidelity search)
        ok &= df["fidelity"].fillna("full").astype(str) != "screen"
    return df[ok]


@dataclass(frozen=True)
class Reference:
    """The scale of each relative objective (``values``); the reference point is MARGIN x each of them, and 0 for
    each absolute objective."""

    values: dict[str, float]
    source: str

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.values.items() if not v > 0}
        if bad:
            raise ValueError(f"reference values must be > 0, got {bad}")

    def describe(self) -> str:
        scaled = ", ".join(f"{name} {MARGIN:g} x {_fmt(name, v)} = {_fmt(name, MARGIN * v)}"
                           for name, v in self.values.items())
        return f"accuracy 0, {scaled} ({self.source})" if scaled else f"accuracy 0 ({self.source})"


def _fmt(name: str, value: float) -> str:
    spec = objective_class(name)
    unit = {"bytes": "B"}.get(spec.unit, spec.unit)
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3f} {unit}"


def reference(df: pd.DataFrame) -> Reference | None:
    """The study's own reference (see the module docstring); None without a completed feasible trial."""
    ok = done(df)
    if ok.empty:
        return None
    relative = [n for n, s in zip(objective_names(df), specs(objective_names(df))) if s.relative]
    base = ok[ok["baseline"] == "uncompressed"]
    if len(base):
        row = base.iloc[0]
        return Reference({n: float(row[n]) for n in relative}, f"uncompressed baseline, trial {int(row['number'])}")
    return Reference({n: float(ok[n].max()) for n in relative},
                     "no uncompressed baseline: largest values among the completed trials")


def losses(df: pd.DataFrame, ref: Reference) -> np.ndarray:
    """Scaled minimisation coordinates of ``df``'s rows (relative / reference, absolute negated)."""
    names = objective_names(df)
    columns = [df[n].to_numpy(float) / ref.values[n] if s.relative else -df[n].to_numpy(float)
               for n, s in zip(names, specs(names))]
    return np.column_stack(columns) if columns else np.empty((len(df), 0))


def _box(names: Sequence[str]) -> tuple[np.ndarray, float]:
    """The reference point in loss coordinates and the volume of the box it spans with the ideal point."""
    point = np.array([MARGIN if s.relative else 0.0 for s in specs(names)])
    return point, float(np.prod([MARGIN if s.relative else 1.0 for s in specs(names)]))


def _volume(points: np.ndarray, names: Sequence[str]) -> float:
    point, box = _box(names)
    inside = points[(points < point).all(axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(compute_hypervolume(inside, point)) / box


def hypervolume(df: pd.DataFrame, ref: Reference | None) -> float:
    """Share of the reference box dominated by the feasible completed trials of ``df`` (0..1)."""
    ok = done(df)
    return 0.0 if ref is None or ok.empty else _volume(losses(ok, ref), objective_names(df))


def history(df: pd.DataFrame, ref: Reference | None) -> pd.DataFrame:
    """After each finished trial (in trial-number order): hypervolume and front size of the trials so far."""
    names = objective_names(df)
    finished = df[df["state"].isin(["COMPLETE", "FAIL", "PRUNED"])].sort_values("number")
    ok = done(df)
    points = losses(ok, ref) if ref is not None and len(ok) else np.empty((0, len(names)))
    numbers = ok["number"].to_numpy()
    values = ok[names].to_numpy(float) * signs(names)
    rows = []
    for number, state, base in finished[["number", "state", "baseline"]].itertuples(index=False):
        upto = numbers <= number
        front = pareto_mask(values[upto]) if upto.any() else np.zeros(0, dtype=bool)
        rows.append({"number": int(number), "state": state, "baseline": base,  # dominated points add no volume
                     "hypervolume": _volume(points[upto][front], names), "front_size": int(front.sum())})
    return pd.DataFrame(rows, columns=["number", "state", "baseline", "hypervolume", "front_size"])


def weakly_dominates(a: pd.Series, b: pd.Series, names: Sequence[str], *, tolerance: dict[str, float] | None = None
                     ) -> bool:
    """``a`` is no worse than ``b`` on every objective (by at most ``tolerance[name]`` on those given)."""
    tol = tolerance or {}
    for name, sign in zip(names, signs(names)):
        if sign * float(a[name]) > sign * float(b[name]) + tol.get(name, 0.0):
            return False
    return True


def baseline_dominance(df: pd.DataFrame, *, tolerance: dict[str, float] | None = None) -> dict[str, int | None]:
    """For each baseline, the first searched trial no worse on every objective (``tolerance`` allowed), or None."""
    names = objective_names(df)
    ok = done(df)
    searched = ok[ok["baseline"] == ""]
    out: dict[str, int | None] = {}
    for _, b in ok[ok["baseline"] != ""].iterrows():
        better = [int(s["number"]) for _, s in searched.iterrows() if weakly_dominates(s, b, names, tolerance=tolerance)]
        out[b["baseline"]] = better[0] if better else None
    return out


def misses(df: pd.DataFrame, dominance: dict[str, int | None], *, n_val: int, tolerance: dict[str, float],
           latency_noise: float | None = None) -> dict[str, dict[str, dict | None]]:
    """Why each baseline no searched trial dominates (but ``uncompressed``) is not dominated, by measurement:

    - ``less_accurate``: the most accurate searched trial no worse on every other objective, how many points it
      lacks (``gap_points``) beside the validation split's noise (``noise_points``: the binomial standard error of
      the baseline's accuracy on ``n_val`` images) and whether the gap is within it; ``trial`` None where no searched
      trial is as small and as fast;
    - ``slower``: the fastest searched trial as accurate (to ``tolerance``) and no worse on the rest, how much slower
      it reads as a share of the baseline's latency (``slower_share``) and, given ``latency_noise`` (a share: how far
      two readings of one model fall apart), whether that is within it; None where there is none.
    """
    names = objective_names(df)
    ok = done(df)
    searched = ok[ok["baseline"] == ""]
    out: dict[str, dict[str, dict | None]] = {}
    for _, b in ok[ok["baseline"] != ""].iterrows():
        if dominance.get(b["baseline"]) is not None or b["baseline"] == "uncompressed":
            continue
        out[str(b["baseline"])] = {"less_accurate": _less_accurate(searched, b, names, n_val),
                                   "slower": _slower(searched, b, names, tolerance, latency_noise)}
    return out


def _less_accurate(searched: pd.DataFrame, b: pd.Series, names: list[str], n_val: int) -> dict | None:
    if "accuracy" not in names:
        return None
    others = [n for n in names if n != "accuracy"]
    cheaper = searched[[weakly_dominates(s, b, others) for _, s in searched.iterrows()]]
    p = float(b["accuracy"])
    noise = round(100 * float(np.sqrt(p * (1 - p) / n_val)), 3) if n_val else None
    if cheaper.empty:
        return {"trial": None, "noise_points": noise}
    best = cheaper.sort_values("accuracy", ascending=False).iloc[0]
    gap = 100 * (p - float(best["accuracy"]))
    return {"trial": int(best["number"]), "accuracy": round(float(best["accuracy"]), 4), "gap_points": round(gap, 3),
            "noise_points": noise, "within_noise": None if noise is None else bool(gap <= noise)}


def _slower(searched: pd.DataFrame, b: pd.Series, names: list[str], tolerance: dict[str, float],
            noise: float | None) -> dict | None:
    if "latency_ms" not in names:
        return None
    others = [n for n in names if n != "latency_ms"]
    close = searched[[weakly_dominates(s, b, others, tolerance=tolerance) for _, s in searched.iterrows()]]
    if close.empty:
        return None
    fastest = close.sort_values("latency_ms").iloc[0]
    excess = float(fastest["latency_ms"]) / float(b["latency_ms"]) - 1.0
    return {"trial": int(fastest["number"]), "latency_ms": round(float(fastest["latency_ms"]), 4),
            "baseline_latency_ms": round(float(b["latency_ms"]), 4), "slower_share": round(excess, 4),
            "within_noise": None if noise is None else bool(excess <= noise)}
