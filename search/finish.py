"""The end of a search: the trials as tables, the Pareto figures, the baselines' dominance (and, with them, the
candidates timed again together), ``summary.json``, the report and the log's summary. One process's search ends
here (``search.process``), and so does a study its workers ran (``search.run``, once they are all done).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .app import prepare, setup, threads, versions
from .loop.remeasure import between_readings, remeasure
from .loop.screening import counts, kendall
from .report.plots import write_pareto_figures
from .report.write import after_search
from .results.front import TOLERANCE, baseline_dominance, hypervolume, misses, reference
from .results.outputs import students_summary, trials_frame, write_json, write_tables
from .sensitivity.plan import guidance
from .storage.backends import load_study

log = logging.getLogger("search")


@dataclass
class Searched:
    """What the end of a search reads: the setup, the prepared pipeline, the study and its guidance."""

    setup: Any
    prepared: Any
    study: Any
    guide: Any


def finish(cfg: DictConfig, *, started: float, workers: int = 1) -> Path:
    """The end of a search its workers ran (``search.run``, once they are done): the study read back, the teacher
    and the sensitivity table from their caches, then the same tables, figures, summary and report as one process
    writes."""
    with threads(cfg.threads):
        s = setup(cfg)
        p = prepare(cfg, s)
        study = load_study(str(cfg.study.name), s.storage)
        guide = guidance(cfg, p, s.out_dir, log=log.info)
        return write_outputs(cfg, Searched(s, p, study, guide), started=started, search_s=time.time() - started,
                       workers=workers)


def write_outputs(cfg: DictConfig, done: Searched, *, started: float, search_s: float, workers: int = 1) -> Path:
    s, p, study, guide = done.setup, done.prepared, done.study, done.guide
    df = trials_frame(study)
    write_tables(df, s.out_dir)
    title = f"{study.study_name}: {cfg.model.name} on {cfg.data.name}"
    figures = write_pareto_figures(df, s.out_dir, title=title, png=bool(cfg.png))
    dominance = baseline_dominance(df, tolerance=TOLERANCE)
    again = timed_again(study, df, s, p) if cfg.study.baselines else {}
    recorded_gap = between_readings(s.out_dir / "remeasured.csv") if again else None  # how far one model's
    # recorded reading and the reading at the end fall apart (its latency as a share of the uncompressed model's)
    missed = misses(df, dominance, n_val=len(s.splits.val_y), tolerance=TOLERANCE, latency_noise=recorded_gap)
    wall = time.time() - started
    write_json(s.out_dir / "summary.json", {
        "study": study.study_name, "storage": s.storage, "workers": workers, "model": cfg.model.name, "teacher_source": p.source,
        "teacher_val_accuracy": p.val_accuracy, "teacher_test_accuracy": p.test_accuracy, "data": s.splits.source,
        "cost_model": s.cost_model.describe(), "versions": versions(), "wall_s": round(wall, 1),
        "search_s": round(search_s, 1), "sensitivity": {
            "entries": 0 if guide.table is None else int(len(guide.table)), "seconds": round(guide.seconds, 1),
            "read_back": guide.cached, "share_of_wall": round(guide.seconds / wall, 4) if not guide.cached else 0.0},
        "anchors": sorted(guide.anchors), "guided_start": int(df["guided"].notna().sum()) if "guided" in df.columns else 0,
        "screening": {**counts(df), **kendall(df)} if s.screening.enabled else None,
        "hypervolume": hypervolumes(df),
        "trials": int(len(df)), "front": int(df["on_front"].sum()), "failed": int((df["state"] == "FAIL").sum()),
        "pruned": int((df["state"] == "PRUNED").sum()), **students_summary(df),
        "baselines_dominated_by": dominance, "dominance_tolerance": TOLERANCE, "baselines_missed": missed,
        "recorded_reading_gap": None if recorded_gap is None else round(recorded_gap, 4), **again,
    })
    after_search(study, cfg, s.out_dir, log=log.info)
    if "png_skipped" in figures:
        log.info(f"pareto.png not written: {figures['png_skipped']}")
    if df.empty:  # ``study.n_trials=0 study.baselines=false``: the teacher trained (and cached), nothing searched
        log.info(f"0 trials: nothing searched (study.n_trials=0, study.baselines=false); results in {s.out_dir}/")
        return s.out_dir
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
    if s.screening.enabled:
        c, k = counts(df), kendall(df)
        log.info(f"screening: {c['screened']} searched trials screened, {c['promoted']} promoted to full fidelity; "
                 f"Kendall's tau screened vs full accuracy {k['kendall_tau']} over {k['pairs']} promoted trials")
    hv = hypervolumes(df)
    log.info(f"hypervolume: searched trials {hv['searched']:.2%}, baselines {hv['baselines']:.2%}, all {hv['all']:.2%}")
    remeasured = again.get("baselines_dominated_by_remeasured", {})
    missed_again = again.get("baselines_missed_remeasured", {})
    for name, number in dominance.items():
        again_by = remeasured.get(name)
        log.info(f"baseline {name}: " + (f"weakly dominated by searched trial {number}" if number is not None
                                          else "not dominated by any searched trial"
                                          + _why(missed.get(name), recorded_gap))
                 + ("" if name not in remeasured else "; timed again together: "
                    + (f"dominated by trial {again_by}" if again_by is not None
                       else "not dominated" + _why(missed_again.get(name), again.get("remeasured_session_gap")))))
    return s.out_dir


def _why(miss: dict | None, latency_noise: float | None = None) -> str:
    """The run's measured reason a baseline is not dominated (``front.misses``), in words."""
    if not miss:
        return ""
    said = []
    acc, slow = miss.get("less_accurate"), miss.get("slower")
    if acc and acc.get("trial") is not None:
        said.append(f"trial {acc['trial']}, the most accurate as small and as fast, is {acc['gap_points']:.2f} points "
                    f"below; the validation split's noise is {acc['noise_points']:.2f}")
    elif acc:
        said.append("no searched trial is as small and as fast")
    if slow:
        said.append(f"trial {slow['trial']}, as accurate and as small, reads {slow['slower_share']:+.1%} of its latency"
                    + (f"; two readings of one model differ by {latency_noise:.1%}" if latency_noise is not None else ""))
    return f" ({'; '.join(said)})" if said else ""


def timed_again(study, df, s, p) -> dict:
    """The baselines and their closest searched rivals re-timed together (``search.loop.remeasure``); a failure
    is said, never raised: the search's files stay."""
    try:
        return remeasure(study, df, storage=s.storage, cost_model=s.cost_model, out_dir=s.out_dir,
                         input_shape=s.splits.input_shape, example=p.pipeline.calibration.numpy(), tolerance=TOLERANCE,
                         n_val=len(s.splits.val_y), location=s.cfg.study.get("artifacts"))
    except Exception as exc:  # noqa: BLE001 - a second reading is a convenience
        log.info(f"re-timing not done ({type(exc).__name__}: {exc})")
        return {}


def hypervolumes(df) -> dict[str, float]:
    """The hypervolume of the searched (full-fidelity) trials alone, of the baselines alone and of all, each against
    the study's reference point (``front.py``)."""
    ref = reference(df)
    searched = df[df["baseline"] == ""]
    return {"searched": round(hypervolume(searched, ref), 6), "baselines": round(hypervolume(df[df["baseline"] != ""], ref), 6),
            "all": round(hypervolume(df, ref), 6)}
