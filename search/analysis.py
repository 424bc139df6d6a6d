"""What the reports compute from a study, kept apart from drawing (``figures.py``) and pages (``report.py``):
hypervolume against a fixed reference point and its history, the per-layer policy of the front, parameter
importances and a short text for a configuration.

Hypervolume. The three objectives are brought to one scale and to minimisation first:
``(-accuracy, size_bytes / S, latency_ms / L)``, where S and L are the size and latency of the study's
``uncompressed`` baseline (or, in a study without one, of its largest and slowest completed trial). The
reference point is fixed: **accuracy 0, size 1.1 x S, latency 1.1 x L**, i.e. ``(0, 1.1, 1.1)`` after scaling.
The hypervolume is reported as the share of the box between the ideal point (accuracy 1, size 0,
latency 0) and the reference point (volume 1 x 1.1 x 1.1) that the feasible completed trials dominate:
0 is nothing, 1 is a perfect model of zero bytes and zero milliseconds. A trial larger or slower than the
reference adds nothing.

Studies compared in one report keep each its own reference: latency is then measured against the
uncompressed model timed in the same run, which cancels the drift of a shared machine between runs (the
same ONNX file can time 4 ms in one run and 6 ms in the next), and each study's hypervolume is the one its
own report shows. Sizes are exact, so for the same model S is the same in every study.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from optuna._hypervolume import compute_hypervolume

from .outputs import OBJECTIVES, pareto_mask

MARGIN = 1.1  # reference point = 1.1 x the uncompressed model's size and latency (and accuracy 0)
BOX_VOLUME = 1.0 * MARGIN * MARGIN


@dataclass(frozen=True)
class Knob:
    label: str  # as shown in hovers and the policy map
    harder: str  # "low" or "high": which end compresses harder (drawn darker)
    unit: str = ""


# The knobs of spaces/ (parameter ``<knob>.<layer fqn>``), in the order the reports show them.
KNOBS: dict[str, Knob] = {
    "bits": Knob("weight bits", "low", "bits"),
    "abits": Knob("activation bits", "low", "bits"),
    "sparsity": Knob("sparsity (weights zeroed)", "high"),
    "rank": Knob("rank kept (low-rank factorization)", "low"),
    "channels": Knob("channels removed", "high"),
}
_SHORT = {"bits": "w bits", "abits": "a bits", "sparsity": "sparsity", "rank": "rank kept", "channels": "channels cut"}


# --------------------------------------------------------------------------- hypervolume


@dataclass(frozen=True)
class Reference:
    """The scale S, L of size and latency; the reference point is (accuracy 0, MARGIN x S, MARGIN x L)."""

    size_bytes: float
    latency_ms: float
    source: str

    def __post_init__(self) -> None:
        if not (self.size_bytes > 0 and self.latency_ms > 0):
            raise ValueError(f"reference size and latency must be > 0, got {self.size_bytes=}, {self.latency_ms=}")

    def describe(self) -> str:
        return (f"accuracy 0, size {MARGIN:g} x {self.size_bytes:,.0f} B = {MARGIN * self.size_bytes:,.0f} B, "
                f"latency {MARGIN:g} x {self.latency_ms:.3f} ms = {MARGIN * self.latency_ms:.3f} ms "
                f"({self.source})")


def done(df: pd.DataFrame) -> pd.DataFrame:
    """Feasible COMPLETE trials with finite values: what fronts and hypervolumes are made of."""
    if df.empty:
        return df
    ok = (df["state"] == "COMPLETE") & df["feasible"].astype(bool)
    ok &= np.isfinite(df[list(OBJECTIVES)].apply(pd.to_numeric, errors="coerce").to_numpy(float)).all(axis=1)
    return df[ok]


def reference(df: pd.DataFrame) -> Reference | None:
    """The study's own reference (see the module docstring); None without a completed feasible trial."""
    ok = done(df)
    if ok.empty:
        return None
    base = ok[ok["baseline"] == "uncompressed"]
    if len(base):
        row = base.iloc[0]
        return Reference(float(row["size_bytes"]), float(row["latency_ms"]),
                         f"uncompressed baseline, trial {int(row['number'])}")
    return Reference(float(ok["size_bytes"].max()), float(ok["latency_ms"].max()),
                     "no uncompressed baseline: largest size and latency among the completed trials")


def losses(df: pd.DataFrame, ref: Reference) -> np.ndarray:
    """Scaled minimisation coordinates (-accuracy, size / S, latency / L) of ``df``'s rows."""
    v = df[list(OBJECTIVES)].to_numpy(float)
    return np.column_stack([-v[:, 0], v[:, 1] / ref.size_bytes, v[:, 2] / ref.latency_ms])


def _volume(points: np.ndarray) -> float:
    point = np.array([0.0, MARGIN, MARGIN])
    inside = points[(points < point).all(axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(compute_hypervolume(inside, point)) / BOX_VOLUME


def hypervolume(df: pd.DataFrame, ref: Reference | None) -> float:
    """Share of the reference box dominated by the feasible completed trials of ``df`` (0..1)."""
    ok = done(df)
    return 0.0 if ref is None or ok.empty else _volume(losses(ok, ref))


def history(df: pd.DataFrame, ref: Reference | None) -> pd.DataFrame:
    """After each finished trial (in trial-number order): hypervolume and front size of the trials so far."""
    finished = df[df["state"].isin(["COMPLETE", "FAIL", "PRUNED"])].sort_values("number")
    ok = done(df)
    points = losses(ok, ref) if ref is not None and len(ok) else np.empty((0, 3))
    numbers = ok["number"].to_numpy()
    signs = np.array([-1.0, 1.0, 1.0])
    values = ok[list(OBJECTIVES)].to_numpy(float) * signs
    rows = []
    for number, state, base in finished[["number", "state", "baseline"]].itertuples(index=False):
        upto = numbers <= number
        front = pareto_mask(values[upto]) if upto.any() else np.zeros(0, dtype=bool)
        rows.append({"number": int(number), "state": state, "baseline": base,  # dominated points add no volume
                     "hypervolume": _volume(points[upto][front]), "front_size": int(front.sum())})
    return pd.DataFrame(rows, columns=["number", "state", "baseline", "hypervolume", "front_size"])


# --------------------------------------------------------------------------- per-layer policy


def param_names(study: optuna.Study) -> list[str]:
    """Every parameter name of the study, in the order the space samples them (model order)."""
    names: dict[str, None] = {}
    for t in study.get_trials(deepcopy=False):
        names.update(dict.fromkeys(t.params))
    return list(names)


def split(name: str) -> tuple[str, str]:
    """``"bits.layer1.0.conv1"`` -> ``("bits", "layer1.0.conv1")``."""
    knob, _, fqn = name.partition(".")
    return knob, fqn


def knob_params(columns: Iterable[str]) -> list[str]:
    """Columns that are knob parameters (``<knob>.<fqn>`` with a knob of spaces/)."""
    return [c for c in columns if isinstance(c, str) and split(c)[0] in KNOBS and split(c)[1]]


def layers_of(names: Sequence[str]) -> list[str]:
    """Layer fqns in order of first appearance."""
    return list(dict.fromkeys(split(n)[1] for n in knob_params(names)))


def knobs_of(names: Sequence[str]) -> list[str]:
    present = {split(n)[0] for n in knob_params(names)}
    return [k for k in KNOBS if k in present]


def front_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The front, most accurate first (ties: smaller first)."""
    front = done(df)
    front = front[front["on_front"].astype(bool)]
    return front.sort_values(["accuracy", "size_bytes"], ascending=[False, True], kind="mergesort")


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
        lines.append(f"{_SHORT[knob]}: " + " · ".join(values))
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
    for i, name in enumerate(OBJECTIVES):
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
