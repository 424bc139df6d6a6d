"""Multi-fidelity screening: every searched trial is first evaluated cheaply, and only a competitive one gets the
full recovery and measurement.

The low fidelity is the same pipeline with a tenth of the recovery steps (``screening.steps``, ``qat_steps``) and
the cost model's short protocol (``BaseCostModel.quick``; a predictor predicts as always); sizes are exact at
either fidelity. A trial is promoted when its screened values are on the front of everything screened so far
(its non-dominated rank among the screened searched trials is below ``promote_rank``). The baselines are not
screened: at a tenth of the recovery a structural change loses more than a quantization-only policy, which needs
little recovery, so a screened baseline would turn away exactly the pruned configurations that beat it once
fully recovered (and screening the 12 baselines of the default search cost two minutes of its budget). A promoted
trial records the full values (``fidelity = full``) and keeps its screened ones as ``screen_<objective>``; one
that is not records its screened values (``fidelity = screen``): it stays in the study and its ``trials.csv``, and
the sampler learns from it, but it never enters the front, the hypervolume, pick or the baselines' comparison.

The guided start's trials (``search/sensitivity/guide.py``) are screened too, for the record, and always promoted
(``promote_guided``): each is aimed at a baseline to dominate, chosen from the sensitivity table, and a screened
front would compare them with trials they are not aimed against. In a benchmark run (seed 0) the two aimed at the
fast, small end came first, and their screened values put the three aimed at baselines off the screened front: none
of those was fully recovered, and no baseline was dominated.

How well screening ranks is measured on the promoted trials: Kendall's tau between screened and full accuracy
(``summary.json: screening.kendall_tau``). The premise (``shared/ENVIRONMENT.md``): on a recorded default study,
50 + 10 recovery steps ranked the trials like the full 500 + 100 with tau 0.86.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from .._checks import whole
from ..sensitivity.knapsack import nondominated_ranks

SCREEN, FULL = "screen", "full"
PREFIX = "screen_"


@dataclass(frozen=True)
class Screening:
    """The settings (``screening.*`` in the config)."""

    enabled: bool = True
    steps: int = 50
    qat_steps: int = 10
    promote_rank: int = 1
    promote_guided: bool = True  # the guided start's trials: screened for the record, always promoted

    def __post_init__(self) -> None:
        for key in ("enabled", "promote_guided"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"screening.{key} must be true or false, got {getattr(self, key)!r}")
        for key in ("steps", "qat_steps"):
            whole(f"screening.{key}", getattr(self, key), 0)
        whole("screening.promote_rank", self.promote_rank, 1)


def screened_points(trials: Sequence[optuna.trial.FrozenTrial], names: Sequence[str]) -> np.ndarray:
    """The screened values (``screen_<name>`` attributes) of the finished trials that have them."""
    rows = [[t.user_attrs[PREFIX + n] for n in names] for t in trials
            if t.state == TrialState.COMPLETE and all(PREFIX + n in t.user_attrs for n in names)]
    return np.asarray(rows, dtype=float).reshape(-1, len(names))


def promotes(values: dict[str, float], pool: np.ndarray, names: Sequence[str], signs: np.ndarray,
             promote_rank: int) -> bool:
    """Whether screened ``values`` rank below ``promote_rank`` among ``pool`` (all screened so far) and itself."""
    point = np.array([[values[n] for n in names]], dtype=float)
    ranks = nondominated_ranks(np.vstack([pool, point]) * signs)
    return bool(ranks[-1] < promote_rank)


def kendall(df: pd.DataFrame) -> dict[str, float | int | None]:
    """Kendall's tau between screened and full accuracy over the promoted searched trials of a trials frame."""
    from scipy.stats import kendalltau

    if "fidelity" not in df.columns or f"{PREFIX}accuracy" not in df.columns or "accuracy" not in df.columns:
        return {"kendall_tau": None, "pairs": 0}
    rows = df[(df["fidelity"] == FULL) & (df["baseline"] == "") & (df["state"] == "COMPLETE")]
    rows = rows[pd.to_numeric(rows[f"{PREFIX}accuracy"], errors="coerce").notna()]
    if len(rows) < 3:
        return {"kendall_tau": None, "pairs": int(len(rows))}
    tau = kendalltau(rows[f"{PREFIX}accuracy"].astype(float), rows["accuracy"].astype(float)).statistic
    return {"kendall_tau": None if not np.isfinite(tau) else round(float(tau), 4), "pairs": int(len(rows))}


def counts(df: pd.DataFrame) -> dict[str, int]:
    """Searched trials evaluated at each fidelity (a promoted one counts at both)."""
    if "fidelity" not in df.columns:
        return {"screened": 0, "promoted": 0, "full_only": 0}
    searched = df[(df["baseline"] == "") & (df["state"] == "COMPLETE")]
    screened = searched[pd.to_numeric(searched.get(f"{PREFIX}accuracy"), errors="coerce").notna()] \
        if f"{PREFIX}accuracy" in searched.columns else searched.iloc[0:0]
    return {"screened": int(len(screened)), "promoted": int((screened["fidelity"] == FULL).sum()),
            "full_only": int(((searched["fidelity"] == FULL) & ~searched.index.isin(screened.index)).sum())}
