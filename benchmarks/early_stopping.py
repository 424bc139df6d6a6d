"""Benchmark: the same ``space=all`` search with early stopping of student trials on and off.

    python3 -m uv run --locked python benchmarks/early_stopping.py [hydra overrides]

Runs two studies that differ only in ``early_stopping.enabled`` (same space, sampler, seed, budget and teacher),
then prints and writes ``results/benchmarks/early_stopping.csv`` (``early_stopping-<hash of the overrides>.csv``
with overrides):
- the student trials' training time, seconds and steps, summed over each study, and the share early stopping
  saved (acceptance: at least 30%);
- the hypervolume of each final front (``search/results/front.py``: each study against its own uncompressed
  baseline, which cancels latency drift between the runs), and the ratio on / off (acceptance: within 2%);
- the rule replayed offline on the study without it (every curve ran to the end there): what it would have
  stopped and saved, and whether any trial on that study's front would have been stopped (it must not).
At the defaults (2 x 30 searched trials, students distilled for 1 epoch: the study with early stopping is the
default ``python -m search space=all``) it takes about 35 minutes on the 2-core VM; ``experiment=smoke study.n_trials=6`` checks that it works in a few minutes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from search.results import front
from search.training.early_stopping import EarlyStopping, replay
from search.results.outputs import atomic_write, students_summary, trials_frame
from search.run import run
from search.training.teacher import cache_key

ROOT = Path(__file__).resolve().parents[1]
# results_dir stays the default, so the search's cached teacher is reused; the studies are
# results/bench-es-{off,on}-<hash of the overrides>/
DEFAULTS = ["space=all", "png=false", "report.importances=false"]  # otherwise the default search (30 trials)


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*DEFAULTS, *overrides])


def main(overrides: list[str]) -> None:
    rows, frames = [], {}
    tag = cache_key(*overrides)[:6]  # other overrides, other studies (the same ones resume an interrupted run)
    for enabled in (False, True):
        name = f"bench-es-{'on' if enabled else 'off'}-{tag}"
        cfg = config(f"early_stopping.enabled={str(enabled).lower()}", f"study.name={name}", *overrides)
        out = run(cfg)
        study = optuna.load_study(study_name=name, storage=cfg.study.storage or f"sqlite:///{out / 'study.db'}")
        df = frames[enabled] = trials_frame(study)
        students = students_summary(df)
        steps = students.get("student_train_steps", {})
        rows.append({
            "early_stopping": enabled, "study": name, "trials": len(df),
            "student_trials": students.get("student_trials", 0), "student_pruned": students.get("student_pruned", 0),
            "student_on_front": students.get("student_on_front", 0),
            "student_train_seconds": students.get("student_train_seconds", 0.0),
            "student_train_steps": steps.get("done", 0), "student_train_steps_budget": steps.get("budget", 0),
            "hypervolume": front.hypervolume(df, front.reference(df)), "front": int(df["on_front"].sum()),
        })
    s = pd.DataFrame(rows).set_index("early_stopping")
    off, on = s.loc[False], s.loc[True]
    per_trial = {k: s.loc[k, "student_train_seconds"] / max(1, s.loc[k, "student_trials"]) for k in (False, True)}
    s["seconds_saved_share"] = 1 - on["student_train_seconds"] / off["student_train_seconds"] if off["student_train_seconds"] else float("nan")
    s["seconds_saved_share_per_student"] = 1 - per_trial[True] / per_trial[False] if per_trial[False] else float("nan")
    s["hypervolume_ratio_on_over_off"] = on["hypervolume"] / off["hypervolume"] if off["hypervolume"] else float("nan")

    recorded = frames[False]
    settings = OmegaConf.to_container(config(*overrides).early_stopping, resolve=True)
    rule = EarlyStopping(**{**settings, "enabled": True})
    rep = replay(recorded, rule)
    budget = pd.to_numeric(recorded.set_index("number").loc[rep["number"], "train_steps"], errors="coerce")
    saved = float((rep["steps_saved_share"].to_numpy() * budget.to_numpy()).sum() / budget.sum()) if len(rep) else 0.0
    s["replay_on_off_study_steps_saved_share"] = saved
    s["replay_front_trials_stopped"] = int((rep["on_front"] & rep["stopped_at"].notna()).sum())
    s["replay_forecasts_below_final"] = int((~rep["forecast_held"].astype(bool)).sum())

    out_dir = ROOT / "results" / "benchmarks"
    suffix = f"-{tag}" if overrides else ""  # the default run keeps the plain names
    csv, replay_csv = out_dir / f"early_stopping{suffix}.csv", out_dir / f"early_stopping_replay{suffix}.csv"
    atomic_write(csv, s.reset_index().to_csv(index=False))
    atomic_write(replay_csv, rep.to_csv(index=False))
    print(s.T.to_string())
    print(f"student training time: {off['student_train_seconds']:.0f} s without early stopping, "
          f"{on['student_train_seconds']:.0f} s with it: {s['seconds_saved_share'].iloc[0]:.0%} saved "
          f"({s['seconds_saved_share_per_student'].iloc[0]:.0%} per student trial; "
          f"{int(off['student_trials'])} and {int(on['student_trials'])} student trials)")
    print(f"hypervolume of the final front: {off['hypervolume']:.2%} without, {on['hypervolume']:.2%} with "
          f"(ratio {s['hypervolume_ratio_on_over_off'].iloc[0]:.3f})")
    print(f"the rule replayed on the study without it: {int(rep['stopped_at'].notna().sum())} of {len(rep)} "
          f"student trials stopped, {saved:.0%} of their steps saved, "
          f"{int(s['replay_front_trials_stopped'].iloc[0])} front trial(s) stopped; the forecast was below the final "
          f"accuracy for {int(s['replay_forecasts_below_final'].iloc[0])} of them")
    print(f"written: {csv}, {replay_csv}")


if __name__ == "__main__":
    main(sys.argv[1:])
