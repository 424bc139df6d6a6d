"""The real pipeline on Fashion-MNIST at the smoke budget: outputs, resume, replay, byte-exact size."""
from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from optuna.trial import TrialState

from search.results.outputs import DEFAULT_OBJECTIVES as OBJECTIVES
from search.app import prepare
from search.run import run

pytestmark = pytest.mark.slow  # real smoke searches: in make test, out of -m "not slow"
CONF = str(Path(__file__).resolve().parents[2] / "conf")


TEACHER: list[Path] = []  # the quick teacher the ``smoke`` fixture's study was searched on


def smoke_cfg(results: Path, *overrides: str):
    """experiment=smoke under ``results``, on the quick teacher of the ``smoke`` fixture's study; training and
    caching a teacher is tested in tests/search/test_models.py."""
    checkpoint = [f"model.checkpoint={t}" for t in TEACHER[:1]]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=["experiment=smoke", f"results_dir={results}", *checkpoint, *overrides])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, quick_teacher, smoke_study):
    TEACHER[:] = [quick_teacher]
    results = smoke_study(tmp_path_factory.mktemp("results"))
    return results, results / "smoke"


def test_smoke_writes_every_output(smoke):
    results, out = smoke
    assert out == results / "smoke"
    for name in ("trials.csv", "pareto.csv", "pareto.html", "config.yaml", "summary.json", "study.db", "report.html"):
        assert (out / name).stat().st_size > 0, name
    df = pd.read_csv(out / "trials.csv", keep_default_na=False)
    for col in ("number", "state", *OBJECTIVES, "baseline", "latency_spread_ms", "macs", "params"):
        assert col in df.columns
    assert any(c.startswith("bits.") for c in df.columns) and any(c.startswith("channels.") for c in df.columns)
    baselines = set(df["baseline"]) - {""}
    assert {"uncompressed", "uniform_int8", "uniform_w4a8", "global_magnitude_50", "channels_50",
            "channels_50_int8", "rank_50"} <= baselines
    assert (df["baseline"] == "").sum() == 3  # experiment=smoke asks for 3 searched trials
    done = df[df["state"] == "COMPLETE"]
    assert len(done) >= 9
    ref = done[done["baseline"] == "uncompressed"].iloc[0]
    int8 = done[done["baseline"] == "uniform_int8"].iloc[0]
    assert int8["size_bytes"] < ref["size_bytes"] / 3.5  # int8 weights really stored at 8 bits
    half = done[done["baseline"] == "channels_50"].iloc[0]
    assert half["params"] < ref["params"] / 3  # channels really removed
    pareto = pd.read_csv(out / "pareto.csv", keep_default_na=False)
    assert len(pareto) == int(df["on_front"].sum()) >= 1
    assert not list(results.glob("outputs")) and not (Path.cwd() / "outputs").exists()


def test_recorded_size_is_the_written_file_byte_for_byte(smoke, tmp_path):
    results, out = smoke
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{out / 'study.db'}")
    prepared = prepare(smoke_cfg(results))
    for trial in study.get_trials(states=(TrialState.COMPLETE,))[-3:]:
        model = prepared.pipeline.build(trial.params)  # replay from the stored params alone
        artifact = prepared.pipeline.materialize(model)
        path = tmp_path / f"trial{trial.number}.cpz"
        path.write_bytes(artifact.packed)
        assert path.stat().st_size == trial.values[1]
        assert prepared.pipeline.accuracy.of(model) == pytest.approx(trial.values[0], abs=1e-9)


def test_interrupted_search_resumes_without_losing_finished_trials(smoke):
    results, out = smoke
    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.load_study(study_name="smoke", storage=storage)
    before = {t.number: t.values for t in study.get_trials(states=(TrialState.COMPLETE,))}
    study.ask()  # a trial left RUNNING, as a killed search leaves it
    run(smoke_cfg(results, "study.n_trials=4"))
    study = optuna.load_study(study_name="smoke", storage=storage)
    after = {t.number: t for t in study.get_trials()}
    for number, values in before.items():
        assert after[number].values == values
    interrupted = [t for t in after.values() if t.state == TrialState.FAIL]
    assert len(interrupted) == 1 and "interrupted" in interrupted[0].user_attrs["error"]
    searched = [t for t in after.values() if "baseline" not in t.user_attrs and t.state == TrialState.COMPLETE]
    assert len(searched) == 4  # one more searched trial, baselines not run again
    assert sum("baseline" in t.user_attrs for t in after.values()) == 7


# --------------------------------------------------------------------------- cost models in a search


def test_lut_build_validate_then_search_and_pick_on_the_real_runtime(smoke):
    """The table flow on the real space: build (tiny budget), validate, search on it, pick re-measures."""
    import json

    from search.hardware import table as lut
    from search.pick.picker import pick

    results, _ = smoke
    table = lut.build(smoke_cfg(results, "hardware=lut", "lut.max_configs=6", "lut.patience=6",
                                "lut.calibrate_every=3"))
    data = json.loads(table.read_text())
    assert table.parent.parent == results / "costmodels" and data["entries"]
    assert data["meta"]["calibration_models"] == 2 and data["fingerprint"]["threads"] == 1

    out = lut.validate(smoke_cfg(results, "hardware=lut", "lut.validate.n=3", "lut.validate.noise_repeats=2"))
    df = pd.read_csv(out / "validation.csv")
    assert {"cost_model", "predicted_ms", "measured_ms"} <= set(df.columns)
    assert sorted(df["cost_model"].unique()) == ["analytic", "lut"] and len(df) == 6
    assert (df["measured_ms"] > 0).all() and (df["predicted_ms"] > 0).all()
    summary = json.loads((out / "validation.json").read_text())
    for name in ("lut", "analytic"):
        assert {"within_10pct", "mape", "spearman", "predict_s_median"} <= set(summary["cost_models"][name])
    assert len(summary["noise_floor"]["readings_ms"]) == 2 and summary["measure_s_median"] > 0
    assert (out / "validation.html").is_file()

    cfg = smoke_cfg(results, "hardware=lut", "study.name=smoke-lut", "study.n_trials=1", "study.baselines=false")
    run(cfg)
    study = optuna.load_study(study_name="smoke-lut", storage=f"sqlite:///{results / 'smoke-lut' / 'study.db'}")
    assert study.user_attrs["cost_model"]["cost_model"] == "lut"
    summary = json.loads((results / "smoke-lut" / "summary.json").read_text())
    assert summary["cost_model"]["cost_model"] == "lut" and summary["failed"] == 0

    with pytest.raises(ValueError, match="holds a study searched with other settings .*hardware"):
        run(smoke_cfg(results, "study.name=smoke-lut", "study.n_trials=1"))  # hardware=cpu on a lut study
    with pytest.raises(ValueError, match="hardware: study 'smoke-lut' holds latencies measured otherwise"):
        run(smoke_cfg(results, "study.name=smoke-lut", "study.n_trials=1", "study.resume=force"))
    assert not (results / "smoke-lut" / "config.1.yaml").exists()  # refused: the study's config left as it was

    picked = pick(smoke_cfg(results, "hardware=lut", "study.name=smoke-lut", "pick.trial=0"))
    assert picked.report["recorded_cost_model"]["cost_model"] == "lut"
    assert picked.report["cost_model"]["cost_model"] == "cpu"  # verified on ONNX Runtime, not on the table
    assert picked.report["latency_ms"]["measured"] > 0


def test_report_of_a_real_smoke_run_in_chromium(smoke, report_page, browser):
    """The report the search wrote at its end loads in Chromium with no error, every figure drawn."""
    results, out = smoke
    shown = report_page(out / "report.html")
    assert len(shown["figures"]) == 4
    front = int(pd.read_csv(out / "trials.csv", keep_default_na=False)["on_front"].sum())
    assert browser.evaluate("document.querySelectorAll('#pareto-table tbody tr').length") == front


# --------------------------------------------------------------------------- students


@pytest.fixture(scope="module")
def students(smoke):
    """A smoke search of students only (the smoke study's teacher), early stopping live after one
    curve; then space=all's setup on the same teacher."""
    results, _ = smoke
    overrides = ["space=student", "study.name=smoke-students", "early_stopping.min_curves=1"]
    out = run(smoke_cfg(results, *overrides))
    return results, out, overrides


def test_student_trials_flow_through_the_outputs(students):
    import json

    results, out, _ = students
    df = pd.read_csv(out / "trials.csv", keep_default_na=False)
    assert {"arch", "curve", "train_steps", "student.width_mult", "student.separable"} <= set(df.columns)
    assert set(df.loc[df["baseline"] != "", "arch"]) == {"teacher"}  # the baselines compress the trained model
    searched = df[df["baseline"] == ""]
    assert len(searched) == 3 and set(searched["arch"]) == {"student"}
    assert set(searched["state"]) <= {"COMPLETE", "PRUNED"} and (searched["state"] == "COMPLETE").any()
    for _, row in searched.iterrows():
        assert float(row["train_steps"]) == 20 and json.loads(row["curve"])
        if row["state"] == "PRUNED":
            assert row["pruned_reason"] and float(row["pruned_step"]) < 20
    summary = json.loads((out / "summary.json").read_text())
    assert summary["student_trials"] == 3 and summary["student_train_steps"]["budget"] == 60
    assert (out / "report.html").stat().st_size > 0


def test_a_student_trial_replays_byte_for_byte_and_is_picked(students):
    from search.pick.bundle import load_model
    from search.pick.picker import pick

    results, out, overrides = students
    study = optuna.load_study(study_name="smoke-students", storage=f"sqlite:///{out / 'study.db'}")
    trial = next(t for t in study.get_trials(states=(TrialState.COMPLETE,)) if "student.width_mult" in t.params)
    prepared = prepare(smoke_cfg(results, *overrides))
    model = prepared.pipeline.build(trial.params)  # the student trained again from its params alone
    assert len(prepared.pipeline.materialize(model).packed) == trial.values[1]
    assert prepared.pipeline.accuracy.of(model) == pytest.approx(trial.values[0], abs=1e-9)

    picked = pick(smoke_cfg(results, *overrides, f"pick.trial={trial.number}"))
    report = picked.report
    assert report["student"]["architecture"]["width_mult"] == trial.params["student.width_mult"]
    assert report["size_bytes"]["measured"] == trial.values[1]
    assert [r for r in report["reasons"] if not r.startswith("latency")] == []
    assert "trained from scratch by distillation" in (picked.path / "README.md").read_text()
    loaded = load_model(picked.path)
    assert loaded(prepared.setup.splits.val_x[:4]).shape == (4, 10)


def test_space_all_holds_teacher_and_student_trials(smoke):
    from search.app import setup
    from spaces import StudentSpace

    results, _ = smoke
    s = setup(smoke_cfg(results, "space=all"))
    assert isinstance(s.space, StudentSpace) and s.space.arch == ("teacher", "student")
    assert s.early_stopping.enabled and s.distillation.steps == 20
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    kinds = {s.space.sample(study.ask())["arch"] for _ in range(8)}
    assert kinds == {"teacher", "student"}
