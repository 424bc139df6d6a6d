"""Choosing one trial of a finished study: pure rules over the trials frame (``outputs.trials_frame``).

Candidates are the COMPLETE trials that meet the study's own constraints, baselines included. The rules:

- ``trial``: that trial number (any COMPLETE trial, even one off the front or past a study constraint).
- limits ``max_size_bytes``, ``max_latency_ms``, ``max_accuracy_drop`` (accuracy fraction below the study's
  ``uncompressed`` baseline), applied in that order, then the best on ``objective``: ``accuracy`` by default,
  ``size`` by default when an accuracy drop is given. Ties go to the better value on the other objectives,
  so the choice is always on the front.
- no rule: the knee of the front. Each objective is min-max normalised over the front points to [0, 1],
  0 being best (accuracy flipped; size on a log scale, as in the Pareto plots, because sizes span orders of
  magnitude), and the knee is the point closest (Euclidean) to the ideal point (0, 0, 0): the
  compromise-programming choice (Zeleny 1973). Ties go to the smaller size.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

OBJECTIVE_COLUMNS = {"accuracy": "accuracy", "size": "size_bytes", "latency": "latency_ms"}
# column -> True where larger is better; the order is the tie-break order after the ranked objective
_BETTER_HIGH = {"accuracy": True, "size_bytes": False, "latency_ms": False}


@dataclass(frozen=True)
class Rule:
    """What ``pick.*`` asks for; checked at construction."""

    trial: int | None = None
    max_latency_ms: float | None = None
    max_size_bytes: float | None = None
    max_accuracy_drop: float | None = None
    objective: str | None = None

    def __post_init__(self) -> None:
        trial = self.trial
        if trial is not None and (isinstance(trial, bool) or not isinstance(trial, int) or trial < 0):
            raise ValueError(f"pick.trial must be a trial number >= 0 or null, got {self.trial!r}")
        for key in ("max_latency_ms", "max_size_bytes", "max_accuracy_drop"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"pick.{key} must be a number >= 0 or null, got {value!r}")
        if self.objective is not None and self.objective not in OBJECTIVE_COLUMNS:
            raise ValueError(f"pick.objective must be one of {list(OBJECTIVE_COLUMNS)} or null, got {self.objective!r}")
        if self.trial is not None and (self.limits() or self.objective is not None):
            raise ValueError(f"pick.trial={self.trial} picks one trial; leave the limits and pick.objective null")

    @classmethod
    def from_cfg(cls, pick_cfg: Any) -> Rule:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(pick_cfg or {}).items() if k in known})

    def limits(self) -> dict[str, float]:
        """The limits set, in the order they are applied."""
        keys = ("max_size_bytes", "max_latency_ms", "max_accuracy_drop")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def ranked_by(self) -> str:
        if self.objective is not None:
            return OBJECTIVE_COLUMNS[self.objective]
        return "size_bytes" if self.max_accuracy_drop is not None else "accuracy"


@dataclass(frozen=True)
class Choice:
    number: int
    reason: str  # the rule in words, for the report and the model card


def describe(row: pd.Series) -> str:
    """``#7 (accuracy 0.8120, 18,432 B, 0.61 ms)``: a trial named by its number and values."""
    name = f" {row['baseline']}" if row.get("baseline") else ""
    return (f"#{int(row['number'])}{name} (accuracy {row['accuracy']:.4f}, {int(row['size_bytes']):,} B, "
            f"{row['latency_ms']:.3f} ms)")


def candidates(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["state"] == "COMPLETE") & df["feasible"].astype(bool)]


def reference_accuracy(df: pd.DataFrame) -> float:
    """The accuracy recorded for the study's uncompressed baseline."""
    ref = df[(df["baseline"] == "uncompressed") & (df["state"] == "COMPLETE")]
    if ref.empty:
        raise ValueError("pick.max_accuracy_drop: the study has no completed 'uncompressed' baseline to measure "
                         "the drop from; run the search with study.baselines=true")
    return float(ref["accuracy"].iloc[0])


def rank(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Best first on ``column``, ties broken by the other objectives, then the trial number."""
    order = [column, *(c for c in _BETTER_HIGH if c != column), "number"]
    return df.sort_values(order, ascending=[not _BETTER_HIGH.get(c, False) for c in order], kind="mergesort")


def _excess(df: pd.DataFrame, key: str, limit: float, reference: float | None) -> pd.Series:
    """How far each row is past ``key``'s limit (<= 0: within it)."""
    if key == "max_accuracy_drop":
        return (reference - df["accuracy"]) - limit
    return df[{"max_size_bytes": "size_bytes", "max_latency_ms": "latency_ms"}[key]] - limit


def within_limits(df: pd.DataFrame, rule: Rule) -> pd.DataFrame:
    """The candidates within every limit; an empty result raises, naming the limit that emptied it."""
    reference = reference_accuracy(df) if rule.max_accuracy_drop is not None else None
    left, applied = candidates(df), []
    for key, limit in rule.limits().items():
        excess = _excess(left, key, limit, reference)
        kept = left[excess <= 1e-12]
        if kept.empty:
            closest = ", ".join(describe(r) for _, r in left.loc[excess.sort_values().index[:3]].iterrows())
            among = f" among the {len(left)} trial(s) within {', '.join(applied)}" if applied else ""
            ref = f" (uncompressed accuracy {reference:.4f})" if key == "max_accuracy_drop" else ""
            raise ValueError(f"pick.{key}={limit}: no completed feasible trial is within it{among}{ref}; "
                             f"closest: {closest or 'none'}")
        left, applied = kept, [*applied, f"pick.{key}={limit}"]
    return left


def knee(df: pd.DataFrame) -> pd.Series:
    """The front point closest to the ideal point after min-max normalisation (see the module docstring)."""
    front = candidates(df)
    front = front[front["on_front"].astype(bool)]
    if front.empty:
        raise ValueError("the study has no completed feasible trial, so no front to pick from")
    goals = np.column_stack([
        -front["accuracy"].to_numpy(float), np.log10(front["size_bytes"].to_numpy(float).clip(min=1)),
        front["latency_ms"].to_numpy(float),
    ])
    span = goals.max(axis=0) - goals.min(axis=0)
    scaled = (goals - goals.min(axis=0)) / np.where(span > 0, span, 1.0)
    distance = pd.Series(np.linalg.norm(scaled, axis=1), index=front.index)
    order = pd.DataFrame({"d": distance.round(12), "s": front["size_bytes"], "n": front["number"]})
    return front.loc[order.sort_values(["d", "s", "n"]).index[0]]


def by_number(df: pd.DataFrame, number: int) -> pd.Series:
    rows = df[df["number"] == number]
    if rows.empty:
        raise ValueError(f"pick.trial={number}: no such trial; the study has trials {int(df['number'].min())}.."
                         f"{int(df['number'].max())}")
    row = rows.iloc[0]
    if row["state"] != "COMPLETE":
        why = row.get("error") if row["state"] == "FAIL" else row.get("pruned_reason")
        error = f": {why}" if isinstance(why, str) and why else ""
        raise ValueError(f"pick.trial={number}: trial is {row['state']}, only COMPLETE trials can be picked{error}")
    return row


def choose(df: pd.DataFrame, rule: Rule) -> Choice:
    """The trial ``rule`` asks for in a trials frame; ``ValueError`` when none fits."""
    if df.empty:
        raise ValueError("the study has no trials; run the search first")
    if rule.trial is not None:
        row = by_number(df, rule.trial)
        return Choice(int(row["number"]), f"pick.trial={rule.trial}")
    if not rule.limits() and rule.objective is None:
        return Choice(int(knee(df)["number"]), "knee of the front (min-max normalised, log size, closest to ideal)")
    column = rule.ranked_by()
    row = rank(within_limits(df, rule), column).iloc[0]
    word = {"accuracy": "most accurate", "size_bytes": "smallest", "latency_ms": "fastest"}[column]
    within = ", ".join(f"pick.{k}={v}" for k, v in rule.limits().items())
    return Choice(int(row["number"]), word + (f" within {within}" if within else " of all completed trials"))


def front_table(df: pd.DataFrame) -> pd.DataFrame:
    """The front and the baselines, most accurate first: what pick prints before it chooses."""
    shown = df[df["on_front"].astype(bool) | (df["baseline"] != "")]
    cols = ["number", "baseline", "accuracy", "size_bytes", "latency_ms", "latency_spread_ms", "on_front", "state"]
    return shown[[c for c in cols if c in shown.columns]].sort_values("accuracy", ascending=False)
