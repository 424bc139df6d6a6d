"""``run(cfg)``: everything ``python -m search`` does, as a plain function.

All user input is checked before anything is written, so a bad config leaves no trace.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .app import prepare, threads, versions
from .baselines import policies
from .front import baseline_dominance
from .outputs import atomic_write, students_summary, trials_frame, write_json, write_tables
from .report.write import after_search
from .report.plots import write_pareto_figures
from .study import enqueue_baselines, fail_interrupted, make_objective, open_study, optimize

log = logging.getLogger("search")


def run(cfg: DictConfig) -> Path:
    """Search, record, write the outputs; returns ``results/<study>/``. PyTorch runs at ``cfg.threads`` threads."""
    with threads(cfg.threads):
        return _run(cfg)


def _run(cfg: DictConfig) -> Path:
    started = time.time()
    for noisy in ("kaleido", "choreographer"):  # PNG export logs every browser step at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    p = prepare(cfg)
    s = p.setup
    s.out_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(name=str(cfg.study.name), storage=s.storage, sampler=s.sampler, objectives=s.objectives)
    described = s.cost_model.describe()
    recorded = study.user_attrs.get("cost_model")
    keys = ("cost_model", "device", "batch_size", "threads", "runtime", "dtype")
    changed = {k: (recorded[k], described[k]) for k in keys if recorded and k in recorded and k in described
               and recorded[k] != described[k]}
    if changed:
        raise ValueError(
            f"hardware: study {study.study_name!r} holds latencies measured otherwise ({changed}, recorded vs now); "
            "mixing them would compare unlike numbers: choose another study.name"
        )
    study.set_user_attr("cost_model", described)  # which cost model produced the latency objective
    atomic_write(s.out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if (n := fail_interrupted(study, s.storage)):
        log.info(f"resuming {study.study_name!r}: {n} interrupted trial(s) recorded as FAIL")
    if cfg.study.baselines:
        enqueue_baselines(study, policies(s.space, p.teacher))
    objective = make_objective(p.pipeline, s.space, s.constraints, p.val_accuracy, s.early_stopping)
    optimize(study, objective, n_trials=int(cfg.study.n_trials), timeout_s=cfg.study.timeout_s, log=log.info)

    df = trials_frame(study)
    write_tables(df, s.out_dir)
    title = f"{study.study_name}: {cfg.model.name} on {cfg.data.name}"
    figures = write_pareto_figures(df, s.out_dir, title=title, png=bool(cfg.png))
    dominance = baseline_dominance(df)
    write_json(s.out_dir / "summary.json", {
        "study": study.study_name, "storage": s.storage, "model": cfg.model.name, "teacher_source": p.source,
        "teacher_val_accuracy": p.val_accuracy, "teacher_test_accuracy": p.test_accuracy, "data": s.splits.source,
        "cost_model": s.cost_model.describe(), "versions": versions(), "wall_s": round(time.time() - started, 1),
        "trials": int(len(df)), "front": int(df["on_front"].sum()), "failed": int((df["state"] == "FAIL").sum()),
        "pruned": int((df["state"] == "PRUNED").sum()), **students_summary(df),
        "baselines_dominated_by": dominance,
    })
    after_search(study, cfg, s.out_dir, log=log.info)
    if "png_skipped" in figures:
        log.info(f"pareto.png not written: {figures['png_skipped']}")
    first = s.objectives[0]
    front = df[df["on_front"]].sort_values(first.name, ascending=first.direction == "minimize")
    log.info(f"{len(df)} trials, {len(front)} on the front; results in {s.out_dir}/")
    shown = [c for c in ("number", "baseline", "arch", *(o.name for o in s.objectives)) if c in front.columns]
    log.info(front[shown].to_string(index=False))
    students = students_summary(df)
    if students.get("student_trials"):
        steps = students["student_train_steps"]
        log.info(f"students: {students['student_trials']} trial(s), {students['student_on_front']} on the front, "
                 f"{students['student_pruned']} stopped early; training steps {steps['done']:,} of {steps['budget']:,} "
                 f"budgeted ({steps['saved_share']:.0%} saved)")
    for name, number in dominance.items():
        log.info(f"baseline {name}: " + (f"weakly dominated by searched trial {number}" if number is not None
                                          else "not dominated by any searched trial"))
    return s.out_dir
