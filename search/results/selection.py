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

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from objectives import objective_class

from .front import objective_names, signs

ALIASES = {"accuracy": "accuracy", "size": "size_bytes", "latency": "latency_ms"}  # pick.objective's short names
WORDS = {"accuracy": "most accurate", "size_bytes": "smallest", "latency_ms": "fastest"}


@dataclass(frozen=True)
class Rule:
    """What ``pick.*`` asks for; checked at construction. ``limits``: {objective name: the largest value allowed}
    from ``pick.max_<objective>`` (``max_size_bytes``, ``max_latency_ms``, ``+pick.max_macs=...``)."""

    trial: int | None = None
    max_accuracy_drop: float | None = None
    objective: str | None = None
    limits: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        trial = self.trial
        if trial is not None and (isinstance(trial, bool) or not isinstance(trial, int) or trial < 0):
            raise ValueError(f"pick.trial must be a trial number >= 0 or null, got {self.trial!r}")
        for key, value in [("max_accuracy_drop", self.max_accuracy_drop),
                           *((f"max_{k}", v) for k, v in self.limits.items())]:
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"pick.{key} must be a number >= 0 or null, got {value!r}")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop >= 1:
            raise ValueError(f"pick.max_accuracy_drop is a fraction in [0, 1) (0.01 = 1 point), got "
                             f"{self.max_accuracy_drop!r}")
        if self.objective is not None and not isinstance(self.objective, str):
            raise ValueError(f"pick.objective must be an objective name ({', '.join(ALIASES)} or the study's own) or "
                             f"null, got {self.objective!r}")
        if self.trial is not None and (self.all_limits() or self.objective is not None):
            raise ValueError(f"pick.trial={self.trial} picks one trial; leave the limits and pick.objective null")

    @classmethod
    def from_cfg(cls, pick_cfg: Any) -> Rule:
        d = dict(pick_cfg or {})
        limits = {k.removeprefix("max_"): v for k, v in d.items()
                  if k.startswith("max_") and k != "max_accuracy_drop" and v is not None}
        return cls(trial=d.get("trial"), max_accuracy_drop=d.get("max_accuracy_drop"), objective=d.get("objective"),
                   limits=limits)

    def all_limits(self) -> dict[str, float]:
        """The limits set, in the order they are applied (``pick.<key>``: value): size, latency, the other
        objectives' by name, then the accuracy drop."""
        order = sorted(self.limits, key=lambda k: ({"size_bytes": 0, "latency_ms": 1}.get(k, 2), k))
        out = {f"max_{k}": self.limits[k] for k in order}
        if self.max_accuracy_drop is not None:
            out["max_accuracy_drop"] = self.max_accuracy_drop
        return out

    def ranked_by(self, objectives: list[str]) -> str:
        """The objective ranked on: ``objective`` (a name or alias), else size with an accuracy drop, else the
        study's first objective (accuracy)."""
        if self.objective is not None:
            name = ALIASES.get(self.objective, self.objective)
            if name not in objectives:
                raise ValueError(f"pick.objective={self.objective!r}: not an objective of this study; choose one of "
                                 f"{[*{a for a, n in ALIASES.items() if n in objectives}, *objectives]}")
            return name
        if self.max_accuracy_drop is not None and "size_bytes" in objectives:
            return "size_bytes"
        return objectives[0]


@dataclass(frozen=True)
class Choice:
    """The trial a rule picked (``number``) and why, in words (``reason``)."""

    number: int
    reason: str  # the rule in words, for the report and the model card


def _value(name: str, value: float) -> str:
    spec = objective_class(name)
    if not spec.relative:
        return f"{name} {value:.4f}"
    unit = {"bytes": "B"}.get(spec.unit, spec.unit)
    return f"{value:,.0f} {unit}".rstrip() if abs(value) >= 100 else f"{value:.3f} {unit}".rstrip()


def describe(row: pd.Series) -> str:
    """``#7 (accuracy 0.8120, 18,432 B, 0.610 ms)``: a trial named by its number and values."""
    name = f" {row['baseline']}" if row.get("baseline") else ""
    names = objective_names(row)
    return f"#{int(row['number'])}{name} ({', '.join(_value(n, float(row[n])) for n in names)})"


def candidates(df: pd.DataFrame) -> pd.DataFrame:
    ok = (df["state"] == "COMPLETE") & df["feasible"].astype(bool)
    if "fidelity" in df.columns:  # a screened-only trial was never measured at full fidelity
        ok &= df["fidelity"].fillna("full").astype(str) != "screen"
    return df[ok]


def reference_accuracy(df: pd.DataFrame) -> float:
    """The accuracy recorded for the study's uncompressed baseline."""
    ref = df[(df["baseline"] == "uncompressed") & (df["state"] == "COMPLETE")]
    if ref.empty:
        raise ValueError("pick.max_accuracy_drop: the study has no completed 'uncompressed' baseline to measure "
                         "the drop from; run the search with study.baselines=true")
    return float(ref["accuracy"].iloc[0])


def rank(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Best first on ``column``, ties broken by the other objectives, then the trial number."""
    names = objective_names(df)
    order = [column, *(c for c in names if c != column), "number"]
    up = dict(zip(names, signs(names) < 0))
    return df.sort_values(order, ascending=[not up.get(c, False) for c in order], kind="mergesort")


def _excess(df: pd.DataFrame, key: str, limit: float, reference: float | None) -> pd.Series:
    """How far each row is past ``key``'s limit (<= 0: within it)."""
    if key == "max_accuracy_drop":
        return (reference - df["accuracy"]) - limit
    return df[key.removeprefix("max_")] - limit


def within_limits(df: pd.DataFrame, rule: Rule) -> pd.DataFrame:
    """The candidates within every limit; an empty result raises, naming the limit that emptied it."""
    names = objective_names(df)
    for key in rule.all_limits():
        name = "accuracy" if key == "max_accuracy_drop" else key.removeprefix("max_")
        if name not in names:
            raise ValueError(f"pick.{key}: {name} is not an objective of this study {names}")
    reference = reference_accuracy(df) if rule.max_accuracy_drop is not None else None
    left, applied = candidates(df), []
    for key, limit in rule.all_limits().items():
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
    names = objective_names(df)
    goals = np.column_stack([
        sign * (np.log10(front[n].to_numpy(float).clip(min=1)) if objective_class(n).log_axis
                else front[n].to_numpy(float))
        for n, sign in zip(names, signs(names))
    ])
    span = goals.max(axis=0) - goals.min(axis=0)
    scaled = (goals - goals.min(axis=0)) / np.where(span > 0, span, 1.0)
    distance = pd.Series(np.linalg.norm(scaled, axis=1), index=front.index)
    tie = names[1] if len(names) > 1 else names[0]
    order = pd.DataFrame({"d": distance.round(12), "s": front[tie], "n": front["number"]})
    return front.loc[order.sort_values(["d", "s", "n"]).index[0]]


def by_number(df: pd.DataFrame, number: int) -> pd.Series:
    rows = df[df["number"] == number]
    if rows.empty:
        raise ValueError(f"pick.trial={number}: no such trial; the study has trials {int(df['number'].min())}.."
                         f"{int(df['number'].max())}")
    row = rows.iloc[0]
    if str(row.get("fidelity", "")) == "screen":
        raise ValueError(f"pick.trial={number}: trial {number} was only screened (a short recovery, fidelity "
                         f"'screen'), never measured at full fidelity; pick a trial of the front instead")
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
    if not rule.all_limits() and rule.objective is None:
        return Choice(int(knee(df)["number"]), "knee of the front (min-max normalised, log size, closest to ideal)")
    column = rule.ranked_by(objective_names(df))
    row = rank(within_limits(df, rule), column).iloc[0]
    word = WORDS.get(column, f"best {column}")
    within = ", ".join(f"pick.{k}={v}" for k, v in rule.all_limits().items())
    return Choice(int(row["number"]), word + (f" within {within}" if within else " of all completed trials"))


def front_table(df: pd.DataFrame) -> pd.DataFrame:
    """The front and the baselines, best first: what pick prints before it chooses."""
    names = objective_names(df)
    shown = df[df["on_front"].astype(bool) | (df["baseline"] != "")]
    cols = ["number", "baseline", *names, "latency_spread_ms", "on_front", "state"]
    return shown[[c for c in cols if c in shown.columns]].sort_values(names[0], ascending=bool(signs(names)[0] > 0))
