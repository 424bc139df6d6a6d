"""What the reports compute from a study, kept apart from drawing (``figures.py``, ``plots.py``) and pages
(``page.py``): the per-layer policy of the front, parameter importances and a short text for a configuration.
Fronts and hypervolume: ``search/results/front.py``.

Knobs are discovered, never listed here: a parameter ``<knob>.<layer fqn>`` is drawn with what its knob class
declares (``spaces.BaseKnob``: label, short name, harder direction, unit, colour scale). A parameter that is
neither a registered knob's, nor a phase's choice between knobs (``factorize.<fqn>``), nor a student's
(``arch``, ``student.*``, ``distill.*``) is an error: the report never silently drops a knob.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import optuna
import pandas as pd

from spaces import BaseKnob, Phase

from ..results.front import done, objective_names, signs
from ..results.outputs import objective_names_of

OTHER_PREFIXES = ("arch", "student", "distill")  # parameters of student trials, not knobs
SELECTORS = tuple(p.selector for p in Phase)  # "<phase>.<fqn>": which knob of a phase acts on a layer


def knob_classes() -> dict[str, type[BaseKnob]]:
    """Every registered knob, in phase order (the order the reports show them)."""
    return dict(sorted(BaseKnob.registry.items(), key=lambda kv: (kv[1].phase, kv[0])))


# --------------------------------------------------------------------------- per-layer policy


def param_names(study: optuna.Study) -> list[str]:
    """Every parameter name of the study, in the order the space samples them (model order)."""
    names: dict[str, None] = {}
    for t in study.get_trials(deepcopy=False):
        names.update(dict.fromkeys(t.params))
    knob_params(names, strict=True)  # a parameter the report cannot draw is an error, not a silent gap
    return list(names)


def split(name: str) -> tuple[str, str]:
    """``"bits.layer1.0.conv1"`` -> ``("bits", "layer1.0.conv1")``."""
    knob, _, fqn = name.partition(".")
    return knob, fqn


def knob_params(columns: Iterable[str], *, strict: bool = False) -> list[str]:
    """Columns that are knob parameters (``<knob>.<fqn>`` of a registered knob). ``strict``: ``columns`` are all
    parameters, and one that is not a knob's, a selector's or a student's is a ValueError."""
    known = knob_classes()
    out = []
    for c in columns:
        if not isinstance(c, str):
            continue
        knob, fqn = split(c)
        if knob in known and fqn:
            out.append(c)
        elif strict and c not in OTHER_PREFIXES and knob not in OTHER_PREFIXES + SELECTORS:
            raise ValueError(f"parameter {c!r}: no knob {knob!r} is registered (spaces/knobs/), so the report cannot "
                             f"draw it; known knobs: {sorted(known)}")
    return out


def layers_of(names: Sequence[str]) -> list[str]:
    """Layer fqns in order of first appearance."""
    return list(dict.fromkeys(split(n)[1] for n in knob_params(names)))


def knobs_of(names: Sequence[str]) -> list[str]:
    present = {split(n)[0] for n in knob_params(names)}
    return [k for k in knob_classes() if k in present]


def front_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The front, best on the first objective first (most accurate), ties by the next objectives."""
    front = done(df)
    front = front[front["on_front"].astype(bool)]
    names = objective_names(df)
    return front.sort_values(names, ascending=[bool(x > 0) for x in signs(names)], kind="mergesort")


def policy(df: pd.DataFrame, names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """{knob: layers x front trials} of the knob's value (NaN where a layer has no such knob)."""
    front, layers = front_rows(df), layers_of(names)
    out = {}
    for knob in knobs_of(names):
        table = pd.DataFrame(np.nan, index=layers, columns=front["number"].astype(int).tolist())
        for layer in layers:
            col = f"{knob}.{layer}"
            if col in front.columns:
                table.loc[layer] = pd.to_numeric(front[col], errors="coerce").to_numpy(float)
        out[knob] = table
    return out


def short_value(v: object) -> str:
    """``8``, ``.5``, ``.12``, ``1``, ``0``; ``–`` for a missing value."""
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(v)
    if not np.isfinite(x):
        return "–"
    if x == int(x):
        return str(int(x))
    return f"{x:.2f}".rstrip("0").removeprefix("0")


def short_config(row: Mapping[str, object], names: Sequence[str], *, max_named_layers: int = 8,
                 layers_line: bool = True) -> list[str]:
    """One line per knob, values in layer order: ``w bits: 8 · 4 · 4 · 2 · 8``; first the layers' names
    when there are few (``layers_line``)."""
    layers = layers_of(names)
    lines = []
    if row.get("arch") == "student":  # a student trial: its architecture first, then its compression
        keys = [n for n in names if n.startswith(("student.", "distill."))] or [
            str(k) for k in row if str(k).startswith(("student.", "distill."))]
        shown = (f"{k.removeprefix('student.')} {row.get(k) if isinstance(row.get(k), bool) else short_value(row.get(k))}"
                 for k in keys)
        lines.append("student: " + " · ".join(shown))
    if layers_line and layers and len(layers) <= max_named_layers:
        lines.append("layers: " + " · ".join(layers))
    for knob in knobs_of(names):
        values = [short_value(row.get(f"{knob}.{layer}", np.nan)) for layer in layers]
        lines.append(f"{knob_classes()[knob].short}: " + " · ".join(values))
    return lines


# --------------------------------------------------------------------------- importances


def importances(study: optuna.Study, *, seed: int = 0) -> dict[str, dict[str, float]] | str:
    """{objective: {param: share}} by fANOVA (Optuna's ``FanovaImportanceEvaluator``, fixed seed): the share
    of each objective's variance over the completed trials that each parameter explains. A string saying why
    when there is too little to evaluate."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return f"parameter importances need at least 2 completed trials; the study has {len(complete)}"
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(objective_names_of(study)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed),
                    target=lambda t, i=i: t.values[i],
                )
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            return f"parameter importances could not be evaluated: {exc}"
        out[name] = {k: float(v) for k, v in imp.items() if np.isfinite(v)}
    return out
