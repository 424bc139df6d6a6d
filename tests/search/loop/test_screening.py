"""Multi-fidelity screening: who is promoted, and a screened-only trial never reaches the front, the hypervolume
or pick."""
from __future__ import annotations

import warnings

import numpy as np
import optuna
import pytest

from search.results.front import hypervolume, reference, signs
from search.results.outputs import trials_frame
from search.results.selection import Rule, choose
from search.loop.screening import FULL, SCREEN, Screening, counts, kendall, promotes

NAMES = ["accuracy", "size_bytes", "latency_ms"]


def study_with(trials) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(NAMES)
    for values, attrs in trials:
        study.add_trial(optuna.trial.create_trial(values=values, user_attrs=attrs))
    return study


def test_a_screened_only_trial_never_reaches_the_front_the_hypervolume_or_pick():
    base = ([0.90, 1000.0, 2.0], {"baseline": "uncompressed", "fidelity": FULL})
    full = ([0.88, 200.0, 1.0], {"fidelity": FULL, "screen_accuracy": 0.80})
    cheap = ([0.99, 10.0, 0.1], {"fidelity": SCREEN, "screen_accuracy": 0.99})  # would dominate everything
    df = trials_frame(study_with([base, full, cheap]))
    assert df["on_front"].tolist() == [True, True, False]
    without = trials_frame(study_with([base, full]))
    assert hypervolume(df, reference(df)) == pytest.approx(hypervolume(without, reference(without)))
    assert choose(df, Rule(objective="accuracy")).number == 0 and choose(df, Rule()).number in (0, 1)
    with pytest.raises(ValueError, match=r"pick.trial=2: trial 2 was only screened"):
        choose(df, Rule(trial=2))
    assert counts(df) == {"screened": 2, "promoted": 1, "full_only": 0}


def test_a_trial_is_promoted_when_its_screened_values_are_on_the_screened_front():
    pool = np.array([[0.80, 1000.0, 2.0], [0.70, 100.0, 1.0]])
    s = signs(NAMES)
    assert promotes({"accuracy": 0.75, "size_bytes": 500.0, "latency_ms": 1.5}, pool, NAMES, s, 1)  # a new trade-off
    assert not promotes({"accuracy": 0.69, "size_bytes": 200.0, "latency_ms": 1.5}, pool, NAMES, s, 1)  # dominated
    assert promotes({"accuracy": 0.69, "size_bytes": 200.0, "latency_ms": 1.5}, pool, NAMES, s, 2)  # second rank
    assert promotes({"accuracy": 0.5, "size_bytes": 5.0, "latency_ms": 9.0}, np.empty((0, 3)), NAMES, s, 1)


def test_kendall_tau_is_taken_over_the_promoted_searched_trials():
    rows = [([a, 100.0 * i, 1.0], {"fidelity": FULL, "screen_accuracy": a - 0.05})
            for i, a in enumerate([0.9, 0.8, 0.7, 0.6], start=1)]
    rows.append(([0.95, 1000.0, 2.0], {"baseline": "uncompressed", "fidelity": FULL, "screen_accuracy": 0.2}))
    got = kendall(trials_frame(study_with(rows)))
    assert got == {"kendall_tau": 1.0, "pairs": 4}  # the baseline's pair is left out


def test_settings_are_checked():
    with pytest.raises(ValueError, match="screening.promote_rank"):
        Screening(promote_rank=0)
    with pytest.raises(ValueError, match="screening.steps"):
        Screening(steps=-1)
