"""Early stopping of student trials: what a student needs, the learned margin, a hopeless trial stopped through
the real objective, and a recorded search replayed: no trial that ended on the front would have been stopped."""
from __future__ import annotations

import json

import functools
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import objectives
from objectives.hardware import AnalyticCostModel
from search.data import Splits
from search.training.early_stopping import EarlyStopping, need, replay
from search.models import SmallCNN
from search.results.outputs import trials_frame, write_tables
from search.pipeline import Distillation, Pipeline, Recovery
from search.loop.study import Constraints, make_objective, open_study, optimize, progress
from spaces import JointSpace, BitsKnob, ActivationBitsKnob, StudentFamily, StudentSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
RECORDED = Path(__file__).resolve().parents[1] / "data" / "recorded_students.csv"
D = optuna.distributions


OBJECTIVES = ("accuracy", "size_bytes", "latency_ms")
DIRECTIONS = {"accuracy": "maximize", "size_bytes": "minimize", "latency_ms": "minimize"}


def points(*rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["number", *OBJECTIVES])


def need_at(front: pd.DataFrame, size: float, latency: float, **kw):
    return need(front, values={"size_bytes": size, "latency_ms": latency}, directions=DIRECTIONS, **kw)


def test_need_is_the_best_accuracy_no_larger_and_no_slower():
    front = points((0, 0.93, 1000, 5.0), (1, 0.90, 300, 2.0), (2, 0.85, 100, 3.0), (3, 0.80, 50, 0.5))
    assert need_at(front, 400, 2.5).accuracy == 0.90  # trial 1 covers it; 2 is slower
    assert need_at(front, 120, 3.0).accuracy == 0.85
    assert need_at(front, 40, 9.0).accuracy == -math.inf  # smaller than everything: any will do
    assert need_at(front, 40, 9.0, floor=0.92).accuracy == 0.92  # max_accuracy_drop
    assert "max_size_bytes" in need_at(front, 2000, 1, limits={"size_bytes": 1500}).impossible
    assert "max_latency_ms" in need_at(front, 20, 4, limits={"latency_ms": 3}).impossible
    # any objectives: with latency alone, a trial is covered by one no slower
    alone = need(front, values={"latency_ms": 2.5}, directions=DIRECTIONS)
    assert alone.accuracy == 0.90


def test_forecast_is_learned_from_finished_curves_once_enough_exist():
    history = [({0.25: 0.60, 0.5: 0.80}, 0.85), ({0.25: 0.70, 0.5: 0.75}, 0.78)]
    error = EarlyStopping(min_curves=2, slack=0.01)
    assert error.forecast(0.25, 0.5, history[:1]) is None  # too few curves: accuracy stops nothing yet
    # the remaining error shrank to 0.15 / 0.40 and 0.22 / 0.30 of itself: at most to 0.375 of it
    assert error.forecast(0.25, 0.5, history) == pytest.approx((1 - 0.5 * 0.375 + 0.01, 2))
    assert error.forecast(0.5, 0.9, history) == pytest.approx((1 - 0.1 * 0.75 + 0.01, 2))
    gain = EarlyStopping(min_curves=2, slack=0.01, margin="gain")
    assert gain.forecast(0.25, 0.5, history) == pytest.approx((0.5 + 0.25 + 0.01, 2))
    worse = [({0.5: 0.9}, 0.8), ({0.5: 0.9}, 0.85)]  # both ended below their checkpoint
    assert gain.forecast(0.5, 0.7, worse)[0] == pytest.approx(0.71)
    assert error.forecast(0.5, 0.7, worse)[0] == pytest.approx(0.71)
    assert EarlyStopping(checkpoints=(0.25, 0.5)).steps(100) == {25: 0.25, 50: 0.5, 100: 1.0}
    for kw, key in (({"checkpoints": (0.5, 1.0)}, "checkpoints"), ({"slack": -1}, "slack"),
                    ({"min_curves": 0}, "min_curves"), ({"val_subset": 0}, "val_subset"), ({"margin": "x"}, "margin")):
        with pytest.raises(ValueError, match=f"early_stopping.{key}"):
            EarlyStopping(**kw)


# --------------------------------------------------------------------------- through the real objective


def toy_splits() -> Splits:
    protos = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def sample(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 10, (n,), generator=g)
        return protos[y] + 0.8 * torch.randn(n, 1, 28, 28, generator=g), y

    (x, y), (vx, vy) = sample(512, 1), sample(200, 2)
    return Splits(x, y, vx, vy, vx, vy, source="toy")


@pytest.fixture
def toy():
    """A toy teacher, a student space (bits on the students' layers) and the real pipeline on toy data."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = SmallCNN(widths=(8, 16, 32), hidden=16).eval()
    family = StudentFamily(net=functools.partial(SmallCNN, widths=(8, 16, 32), hidden=16),
                           choices={"width_mult": [0.5], "separable": [False, True]})
    space = StudentSpace(teacher=JointSpace([BitsKnob(model=teacher), ActivationBitsKnob(model=teacher)]), family=family,
                         knobs=lambda m: JointSpace([BitsKnob(model=m, choices=[8, 32]), ActivationBitsKnob(model=m)]), arch=["student"])
    splits = toy_splits()
    cost = AnalyticCostModel(device="toy", peak_tops={"fp32": 0.1, "int8": 0.2}, memory_gbs=8.0, batch_size=8)
    pipeline = Pipeline(teacher=teacher, space=space, splits=splits, teacher_logits=F.one_hot(splits.train_y, 10) * 5.0,
                        recovery=Recovery(steps=0, qat_steps=2, batch_size=32), cost_model=cost, calibration_samples=32,
                        objectives=objectives.build(OBJECTIVES, images=splits.val_x, labels=splits.val_y, cost_model=cost),
                        distillation=Distillation(steps=40, lr=0.05, batch_size=32))
    yield space, pipeline
    torch.set_num_threads(threads)


def seeded_study(*, dominator: tuple[float, float, float] | None, curves: int) -> optuna.Study:
    """A study holding one completed trial ``dominator`` (accuracy, size, latency) and ``curves`` finished
    student trials, each of which kept at least 0.73 of its error from the first checkpoint to the end."""
    study = open_study(name="es", storage="sqlite:///:memory:", sampler=optuna.samplers.RandomSampler(seed=0),
                       objectives=[objectives.objective_class(n) for n in OBJECTIVES])
    if dominator is not None:
        study.add_trial(optuna.trial.create_trial(values=list(dominator)))
    for i in range(curves):
        curve = [[0.25, 0.60 + i / 100], [0.5, 0.65], [0.75, 0.68], [1.0, 0.69]]
        study.add_trial(optuna.trial.create_trial(values=[0.70 + i / 100, 10**9, 10.0], user_attrs={"curve": curve}))
    return study


def run_one(study: optuna.Study, space, pipeline, constraints=Constraints(), rule=EarlyStopping(val_subset=100)):
    study.enqueue_trial({"student.width_mult": 0.5, "student.separable": True,
                         **space.student_knobs({"student.width_mult": 0.5, "student.separable": True}).identity()})
    optimize(study, make_objective(pipeline, space, constraints, 0.9, rule), n_trials=0, timeout_s=None)
    return study.trials[-1]


def test_a_hopeless_student_is_stopped_at_its_first_checkpoint_with_the_reason(toy):
    space, pipeline = toy
    pipeline.distillation = Distillation(steps=40, lr=1e-6, batch_size=32)  # it learns nothing: stays near chance
    study = seeded_study(dominator=(0.999, 1.0, 1e-6), curves=3)  # near-perfect, tiny and instant
    trial = run_one(study, space, pipeline)
    assert trial.state == optuna.trial.TrialState.PRUNED, trial.user_attrs
    attrs = trial.user_attrs
    assert attrs["pruned_step"] == 10 and attrs["train_steps"] == 40 and attrs["train_steps_done"] == 10
    assert "at step 10 of 40" in attrs["pruned_reason"] and "trial 0 has 0.9990" in attrs["pruned_reason"]
    assert "at best" in attrs["pruned_reason"]
    assert len(attrs["curve"]) == 1 and attrs["seconds_train"] > 0
    df = trials_frame(study)  # the outputs take a PRUNED trial as it is: no values, off the front
    row = df[df["number"] == trial.number].iloc[0]
    assert row["state"] == "PRUNED" and not row["on_front"] and math.isnan(row["accuracy"])
    assert progress(study)["pruned"] == 1


def test_size_or_latency_past_a_constraint_stops_before_training(toy):
    space, pipeline = toy
    trial = run_one(seeded_study(dominator=None, curves=0), space, pipeline, Constraints(max_size_bytes=100))
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["pruned_step"] == 0 and "max_size_bytes" in trial.user_attrs["pruned_reason"]


@pytest.mark.parametrize(("dominator", "curves", "rule"), [
    ((0.999, 1.0, 1e-6), 2, EarlyStopping(val_subset=100, min_curves=3)),  # too few curves to learn a margin
    ((0.999, 1.0, 1e-6), 3, EarlyStopping(val_subset=100, enabled=False)),  # switched off: curve still recorded
    ((0.15, 1.0, 1e-6), 3, EarlyStopping(val_subset=100)),  # the student can beat what covers it
])
def test_a_student_that_may_still_reach_the_front_trains_to_the_end(toy, tmp_path, dominator, curves, rule):
    space, pipeline = toy
    study = seeded_study(dominator=dominator, curves=curves)
    trial = run_one(study, space, pipeline, rule=rule)
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs
    assert [f for f, _ in trial.user_attrs["curve"]] == [0.25, 0.5, 0.75, 1.0]
    assert trial.user_attrs["train_steps_done"] == trial.user_attrs["train_steps"] == 40
    assert trial.user_attrs["seconds_train"] > 0 and trial.values[0] > 0.3
    # the monitor only scores: the trial's model is the one a replay without it builds
    replayed = pipeline.build(trial.params)
    assert pipeline.accuracy.of(replayed) == pytest.approx(trial.values[0], abs=1e-9)
    write_tables(trials_frame(study), tmp_path)
    assert (tmp_path / "trials.csv").stat().st_size > 0


# --------------------------------------------------------------------------- a recorded search, replayed


def test_replay_of_a_recorded_search_never_stops_a_trial_that_ended_on_the_front():
    """``tests/search/data/recorded_students.csv``: a real space=all search on Fashion-MNIST (random sampler, 18
    students among 28 trials, early stopping off so every curve ran to the end; tests/search/data/README.md)."""
    df = pd.read_csv(RECORDED, keep_default_na=False)
    df["feasible"] = df["feasible"].astype(str) == "True"
    df["on_front"] = df["on_front"].astype(str) == "True"
    for col in ("accuracy", "size_bytes", "latency_ms"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    out = replay(df, EarlyStopping(), objectives=OBJECTIVES)
    students = df[(df["arch"] == "student") & (df["state"] == "COMPLETE")]
    assert len(out) == len(students) >= 10
    assert out["on_front"].any(), "the recording should hold students on the front"
    stopped_on_front = out[out["on_front"] & out["stopped_at"].notna()]
    assert stopped_on_front.empty, stopped_on_front
    assert out["stopped_at"].notna().any(), "the rule stops nothing in this recording: the test has no teeth"
    assert out["steps_saved_share"].mean() > 0.3  # on this recording: 11 of 18 students stopped, 43% of steps
    stopped = out[out["stopped_at"].notna()]
    assert (stopped["forecast_at_stop"] < stopped["needed"]).all()

    assert (replay(df, EarlyStopping(min_curves=10**6), objectives=OBJECTIVES)["stopped_at"].isna()).all()  # no margin yet: no stop


def test_replay_flags_a_forecast_that_undershot_the_final_accuracy():
    """The forecast is learned from curves, not a bound: a student that learns faster than any before it may
    end above its forecast; the replay says so (forecast_held False) for the benchmark to report."""
    def row(number, accuracy, curve, size=1000.0, latency=1.0, on_front=False):
        return {"number": number, "state": "COMPLETE", "feasible": True, "accuracy": accuracy, "size_bytes": size,
                "latency_ms": latency, "on_front": on_front, "curve": json.dumps(curve)}
    slow = [[0.25, 0.40], [0.5, 0.42], [1.0, 0.45]]  # learns little after 25%: keeps ~92% of its error
    df = pd.DataFrame([
        row(0, 0.95, [], size=10.0, latency=0.1),  # a teacher trial that dominates everything: the need is 0.95
        row(1, 0.45, slow), row(2, 0.46, slow),
        row(3, 0.90, [[0.25, 0.60], [0.5, 0.80], [1.0, 0.90]]),  # learns fast: forecast at 25% ~0.64, ends at 0.90
    ])
    out = replay(df, EarlyStopping(min_curves=2, slack=0.01), objectives=OBJECTIVES).set_index("number")
    assert out.loc[3, "stopped_at"] == 0.25
    assert out.loc[3, "forecast_at_stop"] < 0.7 < out.loc[3, "accuracy"]
    assert not out.loc[3, "forecast_held"]
    assert out.loc[[1, 2], "forecast_held"].all()
