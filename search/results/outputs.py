"""The files a study leaves in ``results/<study>/``: an interface scripts and notebooks read."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from .front import objective_names, pareto_mask, signs

DEFAULT_OBJECTIVES = ("accuracy", "size_bytes", "latency_ms")  # conf/config.yaml: objectives


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write via a temporary file in the same folder, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """All constraints <= 0 (Optuna 5 stores them by name; older versions as a list)."""
    constraints = trial.constraints or {}
    values = constraints.values() if isinstance(constraints, dict) else constraints
    return all(v <= 0 for v in values)


def objective_names_of(study: optuna.Study) -> list[str]:
    """The study's objectives, by the metric names it was created with."""
    names = study.metric_names
    if not names or len(names) != len(study.directions):
        raise ValueError(f"study {study.study_name!r} has no metric names; it was not created by this engine")
    return list(names)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, the objectives (by the study's metric names), baseline name, feasible,
    on_front, recorded attributes, then the parameters."""
    names = objective_names_of(study)
    first = ["number", "state", *names, "baseline", "feasible", "on_front"]
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = t.values if t.values is not None else [np.nan] * len(names)
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, **dict(zip(names, values))}
        row["baseline"] = t.user_attrs.get("baseline", "")
        row["feasible"] = feasible(t)
        row.update({k: v for k, v in t.user_attrs.items() if k != "baseline" and k not in names})
        row.update({f"param:{k}": v for k, v in t.params.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=first)
    done = (df["state"] == "COMPLETE") & df["feasible"]
    if "fidelity" in df.columns:  # screened-only trials are never on the front
        done &= df["fidelity"].fillna("full").astype(str) != "screen"
    df["on_front"] = False
    if done.any():
        points = df.loc[done, names].to_numpy(float) * signs(names)
        df.loc[done, "on_front"] = pareto_mask(points)
    students = [c for c in df.columns if c.startswith("param:student.")]
    if students:  # a space of students only records no `arch` for them: say which trials trained a student
        inferred = pd.Series(np.where(df[students].notna().any(axis=1), "student", "teacher"), index=df.index)
        df["param:arch"] = df["param:arch"].fillna(inferred) if "param:arch" in df.columns else inferred
    params = sorted(c for c in df.columns if c.startswith("param:"))
    others = [c for c in df.columns if c not in first and c not in params]
    df = df[first + others + params]
    return df.rename(columns={c: c.removeprefix("param:") for c in params})


def write_tables(df: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    first = objective_names(df)[0] if len(df.columns) else None
    front = df[df["on_front"].astype(bool)]
    if first is not None:
        front = front.sort_values(first, ascending=bool(signs([first])[0] > 0))
    return {
        "trials": atomic_write(out_dir / "trials.csv", df.to_csv(index=False)),
        "pareto": atomic_write(out_dir / "pareto.csv", front.to_csv(index=False)),
    }


def write_json(path: Path, data: dict[str, Any]) -> Path:
    return atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def students_summary(df: pd.DataFrame) -> dict[str, Any]:
    """Student trials of a study (``arch == "student"``): how many finished, were stopped early and reached
    the front, and their training steps and seconds, done against budgeted (what early stopping saved)."""
    if "arch" not in df.columns:
        return {}
    students = df[df["arch"] == "student"]
    if students.empty:
        return {"student_trials": 0}

    def total(column: str, rows: pd.DataFrame) -> float:
        return float(pd.to_numeric(rows.get(column, pd.Series(dtype=float)), errors="coerce").fillna(0).sum())

    budget, done = total("train_steps", students), total("train_steps_done", students)
    return {
        "student_trials": int(len(students)), "student_complete": int((students["state"] == "COMPLETE").sum()),
        "student_pruned": int((students["state"] == "PRUNED").sum()),
        "student_on_front": int(students["on_front"].sum()),
        "student_train_steps": {"done": int(done), "budget": int(budget),
                                "saved_share": round(1 - done / budget, 4) if budget else 0.0},
        "student_train_seconds": round(total("seconds_train", students), 1),
    }
