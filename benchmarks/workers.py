"""Benchmark: one worker against two on this machine, on one study's budget, with the journal and with PostgreSQL.

    python3 -m uv run --locked python benchmarks/workers.py [--n-trials 12] [--repeats 1] [hydra overrides]

Each run is the command a user types, ``python -m search study.workers=<w> study.storage=<journal|postgresql>
study.n_trials=<n> study.timeout_s=null`` (the default search otherwise: sensitivity, anchors, guided start,
screening), with the same total PyTorch threads (``threads=2``: one worker with 2, two with 1 each). Runs are
interleaved (journal 1, journal 2, PostgreSQL 1, PostgreSQL 2, then again for ``--repeats``) so a slow spell of the
machine hits both worker counts; all share one results folder, so the teacher is trained (and cached) by the first
run only; each study sweeps its own sensitivity table. Per run, one row of ``results/benchmarks/workers.csv``:

- ``storage``, ``workers``, ``repeat``, ``trials``: searched trials in the study (must equal ``n_trials``);
- ``trials_per_hour``: every finished trial (baselines included) over the span from the first trial's start to the
  last trial's end, times 3600 (the preparation, shared, and the outputs at the end are left out);
- ``hypervolume``: of all its trials against its own reference point (``search/results/front.py``), and
  ``hypervolume_searched`` of its searched full-fidelity trials alone;
- ``lost``: trials failed as ``worker lost``; ``repeated``: searched trials whose parameters an earlier trial of the
  study already had (retries of a lost trial left out); ``teacher_trained``: workers that trained the teacher;
- ``wall_s``: the command's wall time; ``span_s``: the span above; ``cpu_busy``: the CPU time of the command and
  every process it started (workers, PostgreSQL) over ``wall_s`` x the machine's cores: how much of the machine a
  run keeps busy, which bounds what more workers can add.

At the defaults the four runs take about 25 minutes on the 2-core VM.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.results.front import hypervolume, reference  # noqa: E402
from search.results.outputs import atomic_write, trials_frame  # noqa: E402
from search.storage.faults import LOST  # noqa: E402
from search.storage.backends import load_study, url_for  # noqa: E402

OUT = ROOT / "results" / "benchmarks"


def one(storage: str, workers: int, repeat: int, *, n_trials: int, results: Path, extra: list[str]) -> dict:
    name = f"workers-{storage}-{workers}-{repeat}"
    cmd = [sys.executable, "-m", "search", f"study.name={name}", f"results_dir={results}", f"study.storage={storage}",
           f"study.workers={workers}", f"study.n_trials={n_trials}", "study.timeout_s=null", "threads=2", "png=false",
           *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    started, before = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    log = results / f"{name}.log"
    with log.open("w") as out:
        done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    wall, after = time.time() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode:
        raise SystemExit(f"{name}: exit status {done.returncode}; see {log}")
    url = url_for(storage, results_dir=results, name=name)
    study = load_study(name, url)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.datetime_complete is not None and t.datetime_start is not None]
    span = max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)
    searched = [t for t in trials if "baseline" not in t.user_attrs]
    seen, repeated = [], 0
    for t in sorted(trials, key=lambda t: t.number):
        if t.params in seen and "baseline" not in t.user_attrs and "retry_of" not in t.user_attrs:
            repeated += 1
        seen.append(t.params)
    df = trials_frame(study)
    ref = reference(df)
    logs = [log, *sorted((results / name / "workers").glob("*.log"))]
    trained = sum(p.read_text(errors="replace").count("training cnn for") for p in logs)
    return {"storage": storage, "workers": workers, "repeat": repeat, "trials": len(searched),
            "trials_per_hour": round(len(finished) / span.total_seconds() * 3600, 1),
            "hypervolume": round(hypervolume(df, ref), 4),
            "hypervolume_searched": round(hypervolume(df[(df["baseline"] == "")], ref), 4),
            "lost": sum(str(t.user_attrs.get("error", "")).startswith(LOST) for t in trials),
            "repeated": repeated, "teacher_trained": trained, "wall_s": round(wall, 1),
            "span_s": round(span.total_seconds(), 1), "threads_per_worker": max(1, 2 // workers),
            "cpu_busy": round(cpu_s / (wall * os.cpu_count()), 3), "cpu_count": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--storages", nargs="+", default=["journal", "postgresql"])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    results = OUT / "workers"
    results.mkdir(parents=True, exist_ok=True)
    rows = []
    for repeat in range(args.repeats):
        for storage in args.storages:
            for workers in (1, 2):
                rows.append(one(storage, workers, repeat, n_trials=args.n_trials, results=results,
                                extra=args.overrides))
                print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    atomic_write(OUT / "workers.csv", table.to_csv(index=False))
    ratio = table.groupby(["storage", "repeat"]).apply(
        lambda g: g.loc[g["workers"] == 2, "trials_per_hour"].iloc[0] / g.loc[g["workers"] == 1, "trials_per_hour"].iloc[0],
        include_groups=False)
    print(table.to_string(index=False))
    print("\n2 workers / 1 worker, trials per hour:")
    print(ratio.round(2).to_string())
    print(f"written: {OUT / 'workers.csv'}")


if __name__ == "__main__":
    main()
