"""The study loop: a failing trial is recorded with its reason and the search goes on."""
from __future__ import annotations

import time

import optuna
from torch import nn

from objectives import objective_class
from search.results.outputs import trials_frame
from search.pipeline import Evaluation
from search.loop.study import Constraints, enqueue_baselines, make_objective, open_study, optimize, timed_out
from spaces import JointSpace, SparsityKnob


class FlakyPipeline:
    """Evaluates like the real one would report, but raises on every third call."""

    objectives = [objective_class(n) for n in ("accuracy", "size_bytes", "latency_ms")]

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, params):
        self.calls += 1
        if self.calls % 3 == 0:
            raise RuntimeError("ONNX export failed for this configuration")
        s = sum(params.values())
        return Evaluation(values={"accuracy": 0.9 - s / 10, "size_bytes": float(int(1000 * (1 - s / 2))),
                                  "latency_ms": 1.0 + s}, params=10, nonzero_params=5, macs=100, int8_layers=0)


def test_failing_trial_is_recorded_and_search_goes_on():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    space = JointSpace([SparsityKnob(model=model)])
    study = open_study(name="t", storage="sqlite:///:memory:", sampler=optuna.samplers.RandomSampler(seed=0),
                       objectives=FlakyPipeline.objectives)
    objective = make_objective(FlakyPipeline(), space, Constraints(max_accuracy_drop=0.05), 0.9)
    optimize(study, objective, n_trials=6, timeout_s=None)
    df = trials_frame(study)
    assert len(df) == 6
    failed = df[df["state"] == "FAIL"]
    assert len(failed) == 2 and failed["error"].str.contains("ONNX export failed").all()
    assert (df["state"] == "COMPLETE").sum() == 4
    # the accuracy-drop constraint is stored and marks trials infeasible
    done = df[df["state"] == "COMPLETE"]
    assert set(done["feasible"]) <= {True, False}
    assert (~done["feasible"]).any() == bool(((0.9 - done["accuracy"]) > 0.05).any())
    assert not df.loc[~df["feasible"], "on_front"].any()


class SlowPipeline(FlakyPipeline):
    """Never fails, and takes its time."""

    def evaluate(self, params):
        time.sleep(0.3)
        self.calls = 1
        return super().evaluate(params)


def test_enqueued_trials_the_time_budget_left_waiting_are_said_in_one_line():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    space = JointSpace([SparsityKnob(model=model)])
    study = open_study(name="t", storage="sqlite:///:memory:", sampler=optuna.samplers.RandomSampler(seed=0),
                       objectives=SlowPipeline.objectives)
    for _ in range(3):
        study.enqueue_trial({}, user_attrs={"baseline": "b"})
    objective = make_objective(SlowPipeline(), space, Constraints(), 0.9)
    assert optimize(study, objective, n_trials=0, timeout_s=0.1) == 1  # the budget ends it after the first
    line = timed_out(study, 0.1)
    assert line.startswith("study.timeout_s=0.1 ran out with 2 enqueued trials") and "\n" not in line
    assert timed_out(study, None) is None  # no budget: nothing ran out
    assert optimize(study, objective, n_trials=0, timeout_s=None) == 2  # the same command again runs them
    assert timed_out(study, 0.1) is None


def test_constraints_reject_negative_limits():
    try:
        Constraints(max_latency_ms=-1)
    except ValueError as exc:
        assert "max_latency_ms" in str(exc) and "-1" in str(exc)
    else:
        raise AssertionError("negative limit accepted")


def test_a_baseline_near_chance_is_said_with_the_knobs_it_moves():
    from search.loop.baselines import near_chance
    from spaces import BitsKnob

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    space = JointSpace([SparsityKnob(model=model), BitsKnob(model=model)])
    study = open_study(name="c", storage="sqlite:///:memory:", sampler=optuna.samplers.RandomSampler(seed=0),
                       objectives=FlakyPipeline.objectives)
    identity = space.identity()
    sparse = {k: (0.5 if k.startswith("sparsity.") else v) for k, v in identity.items()}
    low_bits = {k: (2 if k.startswith("bits.") else v) for k, v in identity.items()}
    for name, params, accuracy in [("uncompressed", identity, 0.9), ("global_magnitude_50", sparse, 0.54),
                                   ("uniform_2bit", low_bits, 0.11)]:
        study.enqueue_trial(params, user_attrs={"baseline": name})
        trial = study.ask()
        space.sample(trial)
        study.tell(trial, [accuracy, 100.0, 1.0])
    lines = near_chance(trials_frame(study), space, classes=10)
    assert len(lines) == 1  # the limit: 0.1 + 0.1 x (0.9 - 0.1) = 0.18
    assert lines[0].startswith("baseline uniform_2bit keeps 0.110") and ": bits at that setting" in lines[0]
    assert near_chance(trials_frame(study), space, classes=2) == [lines[0].replace("(0.10;", "(0.50;")]


def test_an_undominated_baseline_is_said_with_its_nearest_trials_and_the_noise_beside_each_gap():
    import math

    import pandas as pd

    from search.results.front import TOLERANCE, baseline_dominance, misses
    from search.finish import _why

    df = pd.DataFrame({
        "number": [0, 1, 2, 3, 4, 5], "state": ["COMPLETE"] * 6, "accuracy": [0.95, 0.930, 0.90, 0.9295, 0.928, 0.80],
        "size_bytes": [1000.0, 250.0, 20.0, 240.0, 200.0, 30.0], "latency_ms": [5.0, 2.0, 1.0, 2.1, 1.9, 0.9],
        "baseline": ["uncompressed", "int8", "tiny", "", "", ""], "feasible": [True] * 6, "fidelity": ["full"] * 6})
    dominance = baseline_dominance(df, tolerance=TOLERANCE)
    assert dominance == {"uncompressed": None, "int8": None, "tiny": None}
    missed = misses(df, dominance, n_val=5000, tolerance=TOLERANCE, latency_noise=0.08)
    assert set(missed) == {"int8", "tiny"}  # the uncompressed model is not a baseline to beat
    # int8: trial 4 is as small and as fast and 0.2 points below, beside 0.36 points of binomial standard error;
    # trial 3 keeps its accuracy to 0.05 points, is smaller, and reads 5% slower, beside an 8% gap between readings
    noise = round(100 * math.sqrt(0.93 * 0.07 / 5000), 3)
    assert missed["int8"]["less_accurate"] == {"trial": 4, "accuracy": 0.928, "gap_points": 0.2, "noise_points": noise,
                                               "within_noise": True}
    assert missed["int8"]["slower"] == {"trial": 3, "latency_ms": 2.1, "baseline_latency_ms": 2.0,
                                        "slower_share": 0.05, "within_noise": True}
    assert missed["tiny"] == {"less_accurate": {"trial": None, "noise_points": round(100 * math.sqrt(0.09 / 5000), 3)},
                              "slower": None}  # nothing at 20 B or less; nothing as accurate at that size
    tight = misses(df, dominance, n_val=5000, tolerance=TOLERANCE, latency_noise=0.01)
    assert not tight["int8"]["slower"]["within_noise"]
    said = _why(missed["int8"], 0.08)
    assert "trial 4" in said and "0.20 points below" in said and "+5.0%" in said and "differ by 8.0%" in said


def test_a_baseline_another_worker_runs_is_not_enqueued_again():
    """A worker that prepares while another runs a baseline it enqueued leaves that baseline alone (it ran twice in a
    study of two workers when only finished and waiting ones counted)."""
    study = optuna.create_study(directions=["maximize"])
    policies = {"a": {"x": 0.1}, "b": {"x": 0.2}}
    assert enqueue_baselines(study, policies) == ["a", "b"]
    running = study.ask()  # another worker claims the first one
    assert running.user_attrs["baseline"] == "a"
    assert enqueue_baselines(study, policies) == []
    study.tell(running, state=optuna.trial.TrialState.FAIL)  # lost or interrupted: it may run again
    assert enqueue_baselines(study, policies) == ["a"]
