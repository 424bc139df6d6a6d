"""report.html without a browser: hypervolume, history, policy map, importances, the page and the CLI."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from plotly.offline import get_plotlyjs

from search.results import front as fr
from search.report import analysis as an
from search import report as rp
from search.results.outputs import trials_frame
from search.loop.study import progress

CONF = str(Path(__file__).resolve().parents[3] / "conf")
PLOTLYJS_HEAD = get_plotlyjs()[:200]


def cfg_for(results: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[f"results_dir={results}", "png=false", *overrides])


def frame(rows) -> pd.DataFrame:
    cols = ["number", "state", "accuracy", "size_bytes", "latency_ms", "baseline", "feasible", "on_front"]
    return pd.DataFrame(rows, columns=cols)


def test_hypervolume_of_one_point_against_the_fixed_reference():
    df = frame([(0, "COMPLETE", 0.9, 1000.0, 2.0, "uncompressed", True, True)])
    ref = fr.reference(df)
    assert ref.values == {"size_bytes": 1000.0, "latency_ms": 2.0} and "uncompressed" in ref.source
    # scaled point (-0.9, 1, 1), reference (0, 1.1, 1.1): 0.9 x 0.1 x 0.1 of the 1 x 1.1 x 1.1 box
    assert fr.hypervolume(df, ref) == pytest.approx(0.9 * 0.1 * 0.1 / 1.21)


def test_hypervolume_ignores_failed_infeasible_and_out_of_box_trials():
    base = (0, "COMPLETE", 0.9, 1000.0, 2.0, "uncompressed", True, True)
    alone = fr.hypervolume(frame([base]), fr.reference(frame([base])))
    more = frame([base, (1, "FAIL", 0.99, 1.0, 0.1, "", True, False),
                  (2, "COMPLETE", 0.99, 1.0, 0.1, "", False, False),  # infeasible
                  (3, "COMPLETE", 0.99, 5000.0, 0.1, "", True, True)])  # larger than 1.1 x the reference
    assert fr.hypervolume(more, fr.reference(more)) == pytest.approx(alone)
    better = frame([base, (1, "COMPLETE", 0.95, 100.0, 1.0, "", True, True)])
    assert fr.hypervolume(better, fr.reference(better)) > alone


def test_reference_without_baseline():
    df = frame([(0, "COMPLETE", 0.9, 1000.0, 2.0, "", True, True), (1, "COMPLETE", 0.8, 500.0, 3.0, "", True, True)])
    ref = fr.reference(df)
    assert ref.values == {"size_bytes": 1000.0, "latency_ms": 3.0} and "no uncompressed" in ref.source
    assert fr.reference(frame([])) is None and fr.hypervolume(frame([]), None) == 0.0
    with pytest.raises(ValueError, match="size_bytes"):
        fr.Reference({"size_bytes": 0.0, "latency_ms": 1.0}, "x")


def test_history_is_monotone_and_ends_at_the_study_values(synthetic_study):
    study = synthetic_study(n_trials=12, failed=2)
    df = trials_frame(study)
    ref = fr.reference(df)
    hist = fr.history(df, ref)
    assert list(hist["number"]) == sorted(df["number"])  # every finished trial, failures included
    assert np.all(np.diff(hist["hypervolume"]) >= -1e-12)
    assert hist["hypervolume"].iloc[-1] == pytest.approx(fr.hypervolume(df, ref))
    assert hist["front_size"].iloc[-1] == df["on_front"].sum()
    assert set(hist.loc[hist["baseline"] != "", "number"]) == {0, 1}


def test_policy_tables_hold_the_front_params_in_model_order(synthetic_study):
    study = synthetic_study()
    df, names = trials_frame(study), an.param_names(study)
    assert an.layers_of(names) == ["features.0", "features.4", "fc1", "fc2"]  # model order, not alphabetical
    tables = an.policy(df, names)
    assert list(tables) == ["channels", "rank", "sparsity", "bits", "abits"]
    front = an.front_rows(df)
    for knob, table in tables.items():
        assert list(table.columns) == front["number"].tolist()
        for number in table.columns:
            params = next(t.params for t in study.trials if t.number == number)
            for layer in table.index:
                expected = params.get(f"{knob}.{layer}", np.nan)
                assert table.loc[layer, number] == pytest.approx(expected, nan_ok=True)
    assert np.isnan(tables["channels"].loc["fc2"]).all()  # the last layer has no channel knob


def test_short_config_one_line_per_knob():
    names = ["channels.a", "bits.a", "abits.a", "bits.b", "abits.b", "sparsity.a", "sparsity.b"]
    row = {"channels.a": 0.25, "bits.a": 8, "abits.a": 8, "bits.b": 4, "abits.b": 32, "sparsity.a": 0.5,
           "sparsity.b": 0.0}
    assert an.short_config(row, names) == [
        "layers: a · b", "channels cut: .25 · –", "sparsity: .5 · 0", "w bits: 8 · 4", "a bits: 8 · 32"]


def test_short_config_of_a_student_names_its_architecture_first():
    names = ["arch", "student.width_mult", "student.separable", "bits.a"]
    row = {"arch": "student", "student.width_mult": 0.5, "student.separable": True, "bits.a": 4}
    assert an.short_config(row, names) == ["student: width_mult .5 · separable True", "layers: a", "w bits: 4"]


def test_report_and_progress_with_students_stopped_early(synthetic_study, tmp_path):
    """Student trials (``arch``, ``student.*``) beside the teacher's, two of them PRUNED with their reasons."""
    study = synthetic_study("st")
    d = optuna.distributions
    dists = {"arch": d.CategoricalDistribution(["teacher", "student"]),
             "student.width_mult": d.CategoricalDistribution([0.25, 0.5]),
             "bits.fc1": d.CategoricalDistribution([2, 3, 4, 6, 8, 32])}
    for i, (state, values) in enumerate([("COMPLETE", [0.85, 9_000.0, 0.2]), ("PRUNED", None), ("PRUNED", None)]):
        attrs = {"curve": [[0.25, 0.6], [0.5, 0.7]], "train_steps": 40, "train_steps_done": 10 if values is None else 40}
        if values is None:
            attrs.update(pruned_reason="at step 10 of 40: hopeless", pruned_step=10)
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState[state], values=values, distributions=dists, user_attrs=attrs,
            params={"arch": "student", "student.width_mult": 0.25 * (1 + i % 2), "bits.fc1": 4}))
    df = trials_frame(study)
    assert progress(study)["pruned"] == 2 and int(df["on_front"][df["state"] == "PRUNED"].sum()) == 0
    from search.results.outputs import students_summary

    summary = students_summary(df)
    assert summary["student_pruned"] == 2 and summary["student_train_steps"] == {"done": 60, "budget": 120,
                                                                                 "saved_share": 0.5}
    (tmp_path / "results").mkdir(exist_ok=True)
    html = rp.report(cfg_for(tmp_path / "results", "study.name=st"))["html"].read_text(encoding="utf-8")
    assert "stopped early" in html and "student: width_mult .25" in html


def test_importances_per_objective_and_too_few_trials(synthetic_study):
    imps = an.importances(synthetic_study(n_trials=10))
    assert list(imps) == ["accuracy", "size_bytes", "latency_ms"]
    for values in imps.values():
        assert values and sum(values.values()) == pytest.approx(1.0)
    one = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    one.add_trial(optuna.trial.create_trial(params={"bits.fc1": 8}, values=[0.9, 1.0, 1.0],
                                            distributions={"bits.fc1": optuna.distributions.IntDistribution(2, 32)}))
    assert an.importances(one) == "parameter importances need at least 2 completed trials; the study has 1"


def test_progress_bar_shows_failed_front_and_hypervolume(synthetic_study):
    study = synthetic_study(failed=2)
    shown = progress(study)
    df = trials_frame(study)
    assert shown["failed"] == 2 and shown["front"] == df["on_front"].sum()
    assert shown["hv"] == f"{fr.hypervolume(df, fr.reference(df)):.1%}"


def test_report_html_is_one_offline_file_with_every_section(synthetic_study, tmp_path):
    synthetic_study("s1")
    result = rp.report(cfg_for(tmp_path / "results", "study.name=s1"))
    html = result["html"].read_text(encoding="utf-8")
    assert result["html"] == tmp_path / "results" / "s1" / "report.html"
    assert html.count(PLOTLYJS_HEAD) == 1  # plotly.js embedded exactly once
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert html.count("Plotly.newPlot(") == 4
    for section in ("summary", "front", "hypervolume", "policy", "importance", "pareto", "run"):
        assert f'<section id="{section}">' in html
    front = trials_frame(optuna.load_study(study_name="s1", storage=f"sqlite:///{tmp_path}/results/s1/study.db"))
    assert html.count("python -m search.pick study.name=s1 results_dir=") == int(front["on_front"].sum())
    assert "1.1 x" in html and "TPESampler" in html
    assert not [p for p in (tmp_path / "results" / "s1").iterdir() if p.name.startswith(".")]


def test_comparison_report(synthetic_study, tmp_path):
    synthetic_study("a", seed=1)
    synthetic_study("b", seed=2, n_trials=6)
    result = rp.report(cfg_for(tmp_path / "results", "report.studies=[a,b]"))
    assert result["html"] == tmp_path / "results" / "compare-a-b" / "report.html"
    html = result["html"].read_text(encoding="utf-8")
    assert html.count(PLOTLYJS_HEAD) == 1 and html.count("Plotly.newPlot(") == 2
    assert "its own reference point" in html
    for name in ("a", "b"):  # each study's hypervolume is the one its own report shows
        df = trials_frame(optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/results/{name}/study.db"))
        assert f"{fr.hypervolume(df, fr.reference(df)) * 100:.2f}%" in html
    named = rp.report(cfg_for(tmp_path / "results", "report.studies=[a,b]", "report.name=samplers"))
    assert named["html"].parent.name == "samplers"


def test_joint_front_is_the_union_front(synthetic_study, tmp_path):
    ds = [rp.StudyData(n, synthetic_study(n, seed=i), tmp_path / n, str(tmp_path)) for i, n in enumerate("ab")]
    joint = rp.joint_front(ds)
    assert joint and {s for s, _ in joint} <= {"a", "b"}
    fronts = {(d.name, int(n)) for d in ds for n in d.df.loc[d.df["on_front"], "number"]}
    assert joint <= fronts  # a point on the joint front is on its own study's front


def test_png_export_without_chromium_still_writes_the_html(synthetic_study, tmp_path, monkeypatch):
    synthetic_study("s1")
    monkeypatch.setattr("search.report.write.find_chromium", lambda: None)
    result = rp.report(cfg_for(tmp_path / "results", "study.name=s1", "png=true", "report.importances=false"))
    assert result["html"].is_file() and result["files"] == []
    assert "apt-get install -y chromium" in result["skipped"]


@pytest.mark.parametrize(("overrides", "expected"), [
    (["study.name=nothere"], ["study.name", "nothere", "python -m search"]),
    (["report.studies=[s1]"], ["report.studies", "at least two", "s1"]),
    (["report.studies=[s1,nothere]"], ["report.studies", "nothere"]),
    (["report.studies=[s1,s1]"], ["report.studies", "once"]),
    (["study.name=s1", "report.importances=maybe"], ["report.importances", "maybe", "true or false"]),
    (["report.studies=[s1,../x]"], ["report.studies", "../x", "plain folder name"]),
])
def test_bad_input_one_line_exit_2_nothing_written(synthetic_study, tmp_path, overrides, expected, capsys):
    """Through the entry helper every command uses (``search/cli.py``), in process; test_cli.py runs each command
    once as a real subprocess."""
    from search.cli import entry

    synthetic_study("s1")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        entry(rp.report, argv=[f"results_dir={tmp_path / 'results'}", "png=false", *overrides])
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for word in expected:
        assert word in lines[0], (word, lines[0])
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(("student", "shown"), [
    ({"family": "derived", "init": "scratch"}, "students: derived family, init scratch over <code>conf/space/family/derived.yaml"),
    ({"family": {"_target_": "spaces.DerivedFamily", "choices": {"depth": [0.5]}}, "init": "inherit"},
     "students: DerivedFamily, init inherit over <code>{&#x27;depth&#x27;: [0.5]}"),
    ({"family": None, "init": "inherit"}, "students: SmallCNN over <code>{&#x27;depth&#x27;: [1, 2]}"),
])
def test_the_space_line_names_the_student_family_and_how_a_derived_one_starts(student, shown):
    from types import SimpleNamespace

    from search.report.page import _space

    model = {"student": {"net": {"_target_": "search.models.SmallCNN"}, "choices": {"depth": [1, 2]}}}
    d = SimpleNamespace(names=[], config={"space": {"name": "all", "arch": ["student"], "student": student},
                                          "model": model})
    assert shown in _space(d)
