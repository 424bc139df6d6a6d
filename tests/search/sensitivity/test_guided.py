"""The search with its sensitivity pass, the anchors' baselines, the guided start and screening, at the smoke
budget: what it writes, and a resumed study does not repeat the sensitivity pass."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from search.run import run

CONF = str(Path(__file__).resolve().parents[3] / "conf")
GUIDED = ["study.name=guided", "sensitivity.enabled=true", "screening.enabled=true", "guided.refine=1",
          "guided.n=1", "guided.perturbed=1", "anchors.bits=[4]", "space.knobs.rank=null", "space.knobs.sparsity=null"]


def cfg_for(results: Path, teacher: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=["experiment=smoke", f"results_dir={results}",
                                            f"model.checkpoint={teacher}", *GUIDED, *overrides])


@pytest.fixture(scope="module")
def guided(tmp_path_factory, quick_teacher, primed):
    results = primed(tmp_path_factory.mktemp("results"))
    out = run(cfg_for(results, quick_teacher, "study.n_trials=3"))
    return results, out


@pytest.mark.slow
def test_the_guided_search_writes_the_table_anchors_fidelities_and_figures(guided):
    results, out = guided
    table = pd.read_csv(out / "sensitivity.csv")
    assert {"knob", "layer", "choice", "loss", "bytes_saved", "ms_saved", "macs_saved"} <= set(table.columns)
    assert set(table["knob"]) == {"channels", "bits", "abits"}
    df = pd.read_csv(out / "trials.csv", keep_default_na=False)
    assert {"aimet_amp_4bit", "modelopt_autoquant_4bit", "aimet_greedy_mac50"} <= set(df["baseline"])
    assert {"fidelity", "screen_accuracy", "screen_size_bytes"} <= set(df.columns)
    searched = df[(df["baseline"] == "") & (df["state"] == "COMPLETE")]
    assert set(searched["fidelity"]) <= {"screen", "full"} and (searched["screen_accuracy"] != "").all()
    assert (df.loc[df["fidelity"] == "screen", "on_front"].astype(str) == "False").all()
    assert (df["guided"] != "").sum() >= 2  # the guided start-up ran first among the searched trials
    guided_trials = searched[searched["guided"] != ""]  # screened for the record, always promoted
    assert (guided_trials["fidelity"] == "full").all() and (guided_trials["screen_accuracy"] != "").all()
    first = guided_trials.sort_values("number").iloc[0]  # a baseline a step smaller, on the same graph
    twin = df[df["baseline"] == first["refines"]].iloc[0]
    assert first["int8_layers"] == twin["int8_layers"] and int(first["size_bytes"]) < int(twin["size_bytes"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sensitivity"]["entries"] == len(table) and not summary["sensitivity"]["read_back"]
    assert 0 < summary["sensitivity"]["share_of_wall"] < 1
    assert summary["screening"]["screened"] == len(searched)
    assert set(summary["hypervolume"]) == {"searched", "baselines", "all"}
    html = (out / "report.html").read_text(encoding="utf-8")
    assert '<section id="sensitivity">' in html
    assert ("screened only (low fidelity)" in html) == (searched["fidelity"] == "screen").any()


@pytest.mark.slow
def test_a_resumed_study_reads_the_table_back(guided, quick_teacher, monkeypatch):
    results, out = guided
    before = pd.read_csv(out / "trials.csv", keep_default_na=False)

    def no_sweep(*args, **kwargs):
        raise AssertionError("the sensitivity pass ran again")

    monkeypatch.setattr("search.sensitivity.sweep.sweep_table", no_sweep)
    run(cfg_for(results, quick_teacher, "study.n_trials=4"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sensitivity"]["read_back"] and summary["sensitivity"]["share_of_wall"] == 0.0
    df = pd.read_csv(out / "trials.csv", keep_default_na=False)
    assert (df["baseline"] == "").sum() == 4  # one more searched trial
    assert (df["guided"] != "").sum() == (before["guided"] != "").sum()  # the guided start enqueued once
