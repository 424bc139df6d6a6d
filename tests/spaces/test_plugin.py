"""A knob written outside the project (``tests/spaces/plugin_knob.py``: the public names of ``spaces`` only), plugged
into a real search by config alone: it joins the joint space beside the built-in knobs, acts on layers the rank knob
factorized, and no trial fails."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from search.run import run
from spaces import BaseKnob

pytestmark = pytest.mark.slow  # a real smoke search
CONF = str(Path(__file__).resolve().parents[2] / "conf")


def test_a_knob_from_another_package_plugged_in_by_config_searches_with_no_failed_trial(tmp_path, quick_teacher,
                                                                                        primed):
    results = primed(tmp_path / "results")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            "experiment=smoke", f"results_dir={results}", f"model.checkpoint={quick_teacher}", "study.n_trials=2",
            "space=rank", "+space.knobs.rows._target_=tests.spaces.plugin_knob.RowSparsityKnob",
        ])
    try:
        out = run(cfg)
    finally:
        BaseKnob.registry.pop("rows", None)  # the suite checks that every registered knob is one of the project's
    df = pd.read_csv(out / "trials.csv", keep_default_na=False)
    assert set(df["state"]) == {"COMPLETE"}, df[["number", "state", "baseline"]]
    assert (df["baseline"] == "").sum() == 2
    layers = [c.partition(".")[2] for c in df.columns if c.startswith("rank.")]
    assert layers and all(f"rows.{f}" in df.columns for f in layers)  # the probe left none of its layers out
    (both,) = df[df["baseline"] == "rows_after_rank"].to_dict("records")  # every layer factorized, then masked
    assert all(both[f"rank.{f}"] == 0.125 and both[f"rows.{f}"] == 0.5 for f in layers)
    assert both["size_bytes"] < df[df["baseline"] == "rank_50"]["size_bytes"].iloc[0]
