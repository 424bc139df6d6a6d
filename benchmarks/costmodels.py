"""Benchmark: the same search with hardware=cpu and with hardware=lut, fronts re-measured on the real runtime.

    python3 -m uv run --locked python benchmarks/costmodels.py [hydra overrides]

Runs two studies that differ only in the cost model (same space, sampler, seed and budget), then
rebuilds every completed trial of both (the recovery is deterministic, so the artifacts are the
ones the search scored) and measures all of them on ONNX Runtime, interleaved. It prints and writes
to ``results/benchmarks/costmodels.csv``:
- the median cost of a trial's latency step under each cost model, and their ratio;
- the hypervolume of each study's searched trials with the latencies re-measured, against one
  reference point (1.1 x the worst re-measured value of each objective over both studies; accuracy
  is maximised, so its reference is 0.9 x the worst), and the ratio lut / cpu.
The studies are ``results/bench-cpu`` and ``results/bench-lut`` (a second run resumes them). Needs the
table: ``python -m search.hardware build`` first. Takes about 15-20 minutes at the defaults below.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from hydra import compose, initialize_config_dir
from search.storage._optuna import compute_hypervolume

from objectives.hardware import OrtCpuCostModel
from search.results.outputs import atomic_write
from search.app import prepare
from search.run import run

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ["study.n_trials=20", "recovery.steps=150", "recovery.qat_steps=40", "png=false"]


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*DEFAULTS, *overrides])


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Points as (accuracy, size, latency); accuracy is negated so every column is minimised."""
    signs = np.array([-1.0, 1.0, 1.0])
    inside = np.all(points * signs < reference * signs, axis=1)
    if not inside.any():
        return 0.0
    return compute_hypervolume(points[inside] * signs, reference * signs)


def main(overrides: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    studies = {}
    for name in ("cpu", "lut"):
        cfg = config(f"hardware={name}", f"study.name=bench-{name}", *overrides)
        out = run(cfg)
        study = optuna.load_study(study_name=f"bench-{name}", storage=f"sqlite:///{out / 'study.db'}")
        studies[name] = (cfg, study)

    # rebuild every completed trial of both studies and measure them all together, interleaved
    print("re-measuring every completed trial of both studies, interleaved", flush=True)
    cfg_cpu = studies["cpu"][0]
    p = prepare(cfg_cpu)
    cpu: OrtCpuCostModel = p.setup.cost_model
    rows, artifacts = [], []
    for name, (_, study) in studies.items():
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            artifacts.append(p.pipeline.materialize(p.pipeline.build(t.params)))
            rows.append({"study": name, "number": t.number, "baseline": t.user_attrs.get("baseline", ""),
                         "accuracy": t.values[0], "size_bytes": t.values[1], "latency_recorded_ms": t.values[2],
                         "latency_step_s": t.user_attrs.get("seconds_latency", np.nan)})
    measured = []
    for chunk in np.array_split(np.arange(len(artifacts)), max(1, len(artifacts) // 8)):
        measured += cpu.measure_many([artifacts[i] for i in chunk])
    trials = pd.DataFrame(rows)
    trials["latency_remeasured_ms"] = [m.value_ms for m in measured]

    searched = trials[trials["baseline"] == ""]
    pts = searched[["accuracy", "size_bytes", "latency_remeasured_ms"]].to_numpy(dtype=float)
    reference = np.array([pts[:, 0].min() * 0.9, pts[:, 1].max() * 1.1, pts[:, 2].max() * 1.1])
    summary = []
    for name in studies:
        mine = searched[searched["study"] == name]
        summary.append({
            "cost_model": name, "searched_trials": len(mine),
            "latency_step_s_median": float(trials[trials["study"] == name]["latency_step_s"].median()),
            "hypervolume_remeasured": hypervolume(
                mine[["accuracy", "size_bytes", "latency_remeasured_ms"]].to_numpy(dtype=float), reference),
            "hypervolume_as_recorded": hypervolume(
                mine[["accuracy", "size_bytes", "latency_recorded_ms"]].to_numpy(dtype=float), reference),
            "median_abs_error_recorded_vs_remeasured": float(
                (mine["latency_recorded_ms"] / mine["latency_remeasured_ms"] - 1).abs().median()),
        })
    s = pd.DataFrame(summary).set_index("cost_model")
    step_ratio = s.loc["cpu", "latency_step_s_median"] / s.loc["lut", "latency_step_s_median"]
    hv_ratio = s.loc["lut", "hypervolume_remeasured"] / s.loc["cpu", "hypervolume_remeasured"]
    s["latency_step_speedup_lut"] = step_ratio
    s["hypervolume_ratio_lut_over_cpu"] = hv_ratio
    out_dir = ROOT / "results" / "benchmarks"
    atomic_write(out_dir / "costmodels.csv", s.reset_index().to_csv(index=False))
    atomic_write(out_dir / "costmodels_trials.csv", trials.to_csv(index=False))
    print(s.to_string())
    print(f"latency step: cpu {s.loc['cpu', 'latency_step_s_median']:.3f} s, lut {s.loc['lut', 'latency_step_s_median']:.4f} s "
          f"per trial (median): {step_ratio:.0f}x cheaper with the table")
    print(f"hypervolume of the searched trials, latencies re-measured together on ONNX Runtime: "
          f"lut / cpu = {hv_ratio:.3f} (reference point {reference.round(4).tolist()})")
    print(f"written: {out_dir / 'costmodels.csv'}, {out_dir / 'costmodels_trials.csv'}")


if __name__ == "__main__":
    main(sys.argv[1:])
