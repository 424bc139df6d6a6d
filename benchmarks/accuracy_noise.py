"""Benchmark: how much of an accuracy gap between two trials is noise. A finished study's baselines are rebuilt
from their stored params with the recovery's data order changed (``recovery.seed``), and scored on the same
validation split; beside that spread, the split's own sampling error.

    python3 -m uv run --locked python benchmarks/accuracy_noise.py [--study NAME] [--seeds 0 1 2 3 4]
        [--baselines uniform_int8 ...] [hydra overrides]

``--study`` (default: the default search's, ``fashion-mnist-cnn``) is read from ``results/<study>/study.db``
with the config the search wrote beside it, so its teacher comes from the cache and its anchors' params are the
ones it ran. Per baseline and seed: ``accuracy`` (same split as the search), ``recorded`` (the study's own value,
seed 0), ``seconds``. Then per baseline: mean, standard deviation and range over the seeds, and the binomial
standard error of an accuracy near the mean on ``n_val`` images (sqrt(p (1 - p) / n)).

Writes ``results/benchmarks/accuracy_noise.csv`` (columns ``baseline``, ``seed``, ``accuracy``, ``recorded``,
``seconds``) and ``accuracy_noise_summary.csv`` (``baseline``, ``mean``, ``std``, ``min``, ``max``,
``binomial_se``, ``n_val``). A quantized baseline takes about 15 s a seed on the 2-core VM, one with channels
removed about 40 s.
"""
from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from omegaconf import OmegaConf

from search.app import prepare
from search.results.outputs import atomic_write

ROOT = Path(__file__).resolve().parents[1]


def main(study_name: str, seeds: list[int], names: list[str] | None, overrides: list[str]) -> None:
    out = ROOT / "results" / study_name
    cfg = OmegaConf.load(out / "config.yaml")
    cfg.merge_with_dotlist(["png=false", *overrides])
    study = optuna.load_study(study_name=study_name, storage=cfg.study.storage or f"sqlite:///{out / 'study.db'}")
    trials = {t.user_attrs["baseline"]: t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
              if "baseline" in t.user_attrs and t.user_attrs["baseline"] != "uncompressed"}
    unknown = sorted(set(names or ()) - set(trials))
    if unknown:
        raise SystemExit(f"--baselines: {', '.join(unknown)} not in study {study_name}; allowed: {', '.join(trials)}")
    chosen = {n: trials[n] for n in (names or trials)}
    prepared = prepare(cfg)
    accuracy_index = list(study.metric_names or ["accuracy"]).index("accuracy")
    rows = []
    for name, trial in chosen.items():
        for seed in seeds:
            pipeline = copy.copy(prepared.pipeline)
            pipeline.recovery = replace(prepared.pipeline.recovery, seed=seed)
            start = time.perf_counter()
            acc = pipeline.accuracy.of(pipeline.build(dict(trial.params)))
            rows.append({"baseline": name, "seed": seed, "accuracy": acc,
                         "recorded": trial.values[accuracy_index], "seconds": round(time.perf_counter() - start, 1)})
            print(f"{name} seed {seed}: {acc:.4f} (recorded {trial.values[accuracy_index]:.4f})", flush=True)
    table = pd.DataFrame(rows)
    n_val = len(prepared.setup.splits.val_y)
    summary = table.groupby("baseline", sort=False)["accuracy"].agg(["mean", "std", "min", "max"]).reset_index()
    summary["binomial_se"] = np.sqrt(summary["mean"] * (1 - summary["mean"]) / n_val)
    summary["n_val"] = n_val
    bench = ROOT / "results" / "benchmarks"
    atomic_write(bench / "accuracy_noise.csv", table.to_csv(index=False))
    atomic_write(bench / "accuracy_noise_summary.csv", summary.round(5).to_csv(index=False))
    print(summary.round(5).to_string(index=False))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="fashion-mnist-cnn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--baselines", nargs="+", default=None)
    args, rest = parser.parse_known_args()
    main(args.study, args.seeds, args.baselines, rest)
