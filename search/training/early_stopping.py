"""Multi-objective early stopping of student trials: stop training a student that cannot reach the front.

A student's size and latency depend on its structure only (widths, factorized layers, masks, bit-widths),
so the pipeline measures them on the untrained student before training. The accuracy the student then needs
is known up front: more than every completed feasible trial that is no larger and no slower (else it is
dominated), and at least the accuracy floor of ``study.constraints.max_accuracy_drop``. A size or latency
past its constraint can never be kept: the trial stops at step 0.

During training the student is scored on a fixed validation subset at a few checkpoints (fractions of its
budget). It stops when even an optimistic forecast of its final accuracy is below what it needs. The forecast
comes from the learning curves of finished student trials (``margin``):

- ``error`` (default): the remaining error shrinks by at most the smallest ratio seen,
  ``final <= 1 - (1 - a) * min(error_final / error_at_checkpoint)``; the ratio varies between students (from
  25% to the end, 0.29 to 0.88 in the README's runs), so this is a learned forecast, not a bound: with few
  curves it can be too low (``replay`` reports where it was);
- ``gain``: the accuracy rises by at most the largest gain seen from that checkpoint to the end.

``slack`` is added to either. The final accuracy is on the whole validation split after BN folding,
quantization and its fine-tune, so what is learned also absorbs the subset's noise and any quantization loss.
Until ``min_curves`` curves exist (default 1) there is no forecast and accuracy stops nothing.

A stopped trial is stored as PRUNED with ``pruned_reason`` and ``pruned_step`` (0 = before training). Every
student trial records its ``curve`` ([fraction, accuracy] pairs) and its training steps, done and budgeted.
``replay`` runs the rule over a recorded study offline (tests and ``benchmarks/early_stopping.py``).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from objectives import objective_class

from ..results.front import objective_names
from ..results.outputs import feasible


MARGINS = ("error", "gain")  # how the forecast of a student's final accuracy is learned (module docstring)


@dataclass(frozen=True)
class EarlyStopping:
    """The rule's settings (``early_stopping.*`` in the config)."""

    enabled: bool = True
    checkpoints: tuple[float, ...] = (0.25, 0.5, 0.75)  # fractions of the student's training budget
    val_subset: int = 1000  # validation images scored at each checkpoint (the first of the fixed split)
    min_curves: int = 1  # finished student curves needed before accuracy can stop a trial
    slack: float = 0.01  # accuracy fraction added to the forecast
    margin: str = "error"  # "error": smallest ratio of remaining error seen; "gain": largest accuracy gain seen

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoints", tuple(float(c) for c in self.checkpoints))
        if not isinstance(self.enabled, bool):
            raise ValueError(f"early_stopping.enabled must be true or false, got {self.enabled!r}")
        if any(not 0 < c < 1 for c in self.checkpoints) or len(set(self.checkpoints)) != len(self.checkpoints):
            raise ValueError(f"early_stopping.checkpoints must be distinct fractions in (0, 1), got {list(self.checkpoints)}")
        if not isinstance(self.val_subset, int) or self.val_subset < 1:
            raise ValueError(f"early_stopping.val_subset must be an integer >= 1, got {self.val_subset!r}")
        if not isinstance(self.min_curves, int) or self.min_curves < 1:
            raise ValueError(f"early_stopping.min_curves must be an integer >= 1, got {self.min_curves!r}")
        if not isinstance(self.slack, (int, float)) or self.slack < 0:
            raise ValueError(f"early_stopping.slack must be a number >= 0, got {self.slack!r}")
        if self.margin not in MARGINS:
            raise ValueError(f"early_stopping.margin must be one of {list(MARGINS)}, got {self.margin!r}")

    def steps(self, total: int) -> dict[int, float]:
        """{training step: checkpoint fraction} for a budget of ``total`` steps (the end is always scored)."""
        out = {max(1, round(f * total)): f for f in sorted(self.checkpoints)}
        out = {s: f for s, f in out.items() if s < total}
        out[total] = 1.0
        return out

    def forecast(self, fraction: float, accuracy: float,
                 history: Sequence[tuple[Mapping[float, float], float]]) -> tuple[float, int] | None:
        """(the best final accuracy to expect of a student at ``accuracy`` at ``fraction``, curves used), learned
        from finished curves ({fraction: accuracy}, final accuracy); None with fewer than ``min_curves``."""
        seen = [(curve[fraction], final) for curve, final in history if fraction in curve]
        if len(seen) < self.min_curves:
            return None
        if self.margin == "gain":
            best = accuracy + max(0.0, max(final - at for at, final in seen))
        else:  # the smallest share of its error a finished student kept, never above 1 (it may have got worse)
            kept = min(1.0, min((1 - final) / (1 - at) if at < 1 else 1.0 for at, final in seen))
            best = 1 - (1 - accuracy) * kept
        return best + self.slack, len(seen)


# --------------------------------------------------------------------------- what a student needs


@dataclass(frozen=True)
class Need:
    """The accuracy a trial of known size and latency must beat (``accuracy``), and why."""

    accuracy: float  # -inf: anything will do
    why: str
    impossible: str | None = None  # set when no accuracy can keep the trial (a size/latency constraint)


def need(points: pd.DataFrame, *, values: Mapping[str, float], directions: Mapping[str, str],
         floor: float | None = None, limits: Mapping[str, float] | None = None) -> Need:
    """What a trial with structural objective ``values`` (size, latency, ... by name) needs, given the completed
    feasible trials ``points`` (columns number, accuracy and those objectives) and the constraints: the best
    accuracy among the trials no worse on every one of ``values`` (``directions``: maximize or minimize)."""
    for name, limit in (limits or {}).items():
        if name in values and values[name] > limit:
            return Need(math.inf, "", f"{name} {values[name]:,.6g} is past study.constraints.max_{name}={limit:,.6g}")
    best, why = -math.inf, "nothing"
    covering = points
    for name, value in values.items():
        covering = covering[covering[name] >= value] if directions[name] == "maximize" else \
            covering[covering[name] <= value]
    if len(covering):
        row = covering.loc[covering["accuracy"].idxmax()]
        best = float(row["accuracy"])
        at = ", ".join(f"{name} {row[name]:,.6g}" for name in values)
        why = f"trial {int(row['number'])} has {best:.4f} at {at}, no worse on each"
    if floor is not None and floor > best:
        best, why = floor, f"study.constraints.max_accuracy_drop sets the floor {floor:.4f}"
    return Need(best, why)


def completed_points(trials: Sequence[optuna.trial.FrozenTrial], names: Sequence[str]) -> pd.DataFrame:
    """The completed feasible trials' objective values (``names``, the study's objectives in order)."""
    rows = [{"number": t.number, **dict(zip(names, t.values))}
            for t in trials if t.state == TrialState.COMPLETE and t.values is not None and feasible(t)]
    return pd.DataFrame(rows, columns=["number", *names])


def curve_of(attr: Any) -> dict[float, float]:
    """A recorded ``curve`` user attribute ([[fraction, accuracy], ...], or its JSON text as trials.csv holds it)
    as {fraction: accuracy}; {} for none."""
    if isinstance(attr, str):
        attr = json.loads(attr) if attr.strip() else []
    if not isinstance(attr, (list, tuple)):
        return {}
    return {float(f): float(a) for f, a in attr}


def finished_curves(trials: Sequence[optuna.trial.FrozenTrial], names: Sequence[str]
                    ) -> list[tuple[dict[float, float], float]]:
    at = list(names).index("accuracy")
    return [(curve_of(t.user_attrs["curve"]), float(t.values[at])) for t in trials
            if t.state == TrialState.COMPLETE and t.values is not None and t.user_attrs.get("curve")]


# --------------------------------------------------------------------------- during a trial


class Monitor:
    """The rule applied to one student trial as it trains; records what it saw on the trial.

    ``start`` once the size and latency are known (may stop at step 0); ``check`` at each checkpoint.
    Stopping records ``pruned_reason`` and ``pruned_step`` and raises ``optuna.TrialPruned``.
    """

    def __init__(self, *, rule: EarlyStopping, trial: optuna.Trial, objectives: Sequence[Any],
                 floor: float | None = None, limits: Mapping[str, float] | None = None) -> None:
        self.rule, self.trial, self.floor, self.limits = rule, trial, floor, dict(limits or {})
        self.names = [o.name for o in objectives]
        self.directions = {o.name: o.direction for o in objectives}
        if "accuracy" not in self.names:
            raise ValueError(f"early_stopping: student trials are stopped on accuracy, which is not an objective "
                             f"of this study {self.names}; set early_stopping.enabled=false")
        self.curve: list[list[float]] = []
        self.need: Need | None = None
        self.history: list[tuple[dict[float, float], float]] = []

    def start(self, *, values: Mapping[str, float], total_steps: int) -> None:
        """``values``: the trial's structural objectives (known before it trains)."""
        trials = self.trial.study.get_trials(deepcopy=False)
        self.need = need(completed_points(trials, self.names), values=values, directions=self.directions,
                         floor=self.floor, limits=self.limits)
        self.history = finished_curves(trials, self.names)
        self.trial.set_user_attr("train_steps", int(total_steps))
        if math.isfinite(self.need.accuracy):
            self.trial.set_user_attr("accuracy_needed", round(self.need.accuracy, 6))
        if self.rule.enabled and self.need.impossible:
            self._stop(0, 0.0, f"before training: {self.need.impossible}")

    def check(self, *, step: int, total_steps: int, fraction: float, accuracy: float, seconds: float) -> None:
        self.curve.append([fraction, round(accuracy, 6)])
        self.trial.set_user_attr("curve", self.curve)
        if fraction >= 1.0:
            self.trial.set_user_attr("train_steps_done", int(step))
        if not self.rule.enabled or fraction >= 1.0 or self.need is None:
            return
        found = self.rule.forecast(fraction, accuracy, self.history)
        if found is None:
            return
        best, n = found
        if best < self.need.accuracy:
            how = "smallest share of error kept" if self.rule.margin == "error" else "largest gain"
            self._stop(step, seconds, (
                f"at step {step} of {total_steps} ({fraction:.0%} of training): accuracy {accuracy:.4f} on "
                f"{self.rule.val_subset} validation images, at best {best:.4f} at the end ({how} from here in {n} "
                f"finished student curves, + slack {self.rule.slack}) < {self.need.accuracy:.4f} needed: "
                f"{self.need.why}"))

    def _stop(self, step: int, seconds: float, reason: str) -> None:
        self.trial.set_user_attr("pruned_reason", reason)
        self.trial.set_user_attr("pruned_step", int(step))
        self.trial.set_user_attr("train_steps_done", int(step))
        self.trial.set_user_attr("seconds_train", round(seconds, 3))
        raise optuna.TrialPruned(reason)


# --------------------------------------------------------------------------- offline replay


def replay(df: pd.DataFrame, rule: EarlyStopping, *, floor: float | None = None,
           objectives: Sequence[str] | None = None) -> pd.DataFrame:
    """The rule run over a recorded study (``outputs.trials_frame``; student trials carry ``curve``), trial
    after trial in number order, each seeing only the trials before it, as the live search would have.

    One row per completed student trial with a curve: ``stopped_at`` (the fraction it would have stopped at,
    NaN if never), ``forecast_at_stop``, ``forecast_held`` (False when a forecast made for it, up to where it
    stopped, was below the final accuracy it really reached: the bound was wrong), ``steps_saved_share`` (of its
    budget) and ``on_front`` (at the end of the recorded study). ``objectives``: the study's objective names (by
    default read from the columns of a trials frame).
    """
    names = list(objectives) if objectives is not None else objective_names(df)
    directions = {n: objective_class(n).direction for n in names}
    structural = [n for n in names if objective_class(n).structural]
    df = df.sort_values("number")
    rows = []
    for _, t in df.iterrows():
        curve = curve_of(t.get("curve"))
        if t["state"] != "COMPLETE" or not curve:
            continue
        before = df[df["number"] < t["number"]]
        done = before[(before["state"] == "COMPLETE") & before["feasible"].astype(bool)]
        found = need(done[["number", *names]], values={n: float(t[n]) for n in structural},
                     directions=directions, floor=floor)
        finished = before[before["state"] == "COMPLETE"]
        history = [(curve_of(c), float(a)) for c, a in zip(finished.get("curve", []), finished["accuracy"]) if curve_of(c)]
        stopped, at_stop, held = np.nan, np.nan, True
        for fraction, accuracy in sorted(curve.items()):
            forecast = rule.forecast(fraction, accuracy, history) if fraction < 1.0 else None
            if forecast is None:
                continue
            held = held and float(t["accuracy"]) <= forecast[0]
            if forecast[0] < found.accuracy:
                stopped, at_stop = fraction, forecast[0]
                break
        rows.append({"number": int(t["number"]), "accuracy": float(t["accuracy"]), "needed": found.accuracy,
                     "stopped_at": stopped, "forecast_at_stop": at_stop, "forecast_held": held,
                     "steps_saved_share": 0.0 if np.isnan(stopped) else 1.0 - stopped, "on_front": bool(t["on_front"])})
    return pd.DataFrame(rows, columns=["number", "accuracy", "needed", "stopped_at", "forecast_at_stop", "forecast_held",
                                       "steps_saved_share", "on_front"])
