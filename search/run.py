"""``run(cfg)``: everything ``python -m search`` does, as a plain function.

All user input is checked before anything is written, so a bad config leaves no trace.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from .app import prepare, setup, threads, versions
from .baselines import near_chance, policies
from .front import TOLERANCE, baseline_dominance, hypervolume, misses, reference
from .outputs import students_summary, trials_frame, write_json, write_tables
from .pick.remeasure import remeasure, store
from .pick.verify import between_readings
from .report.write import after_search
from .report.plots import write_pareto_figures
from .screening import counts, kendall
from .sensitivity.plan import guidance, guided
from .study import (
    already_guided, check_resume, enqueue_baselines, enqueue_guided, fail_interrupted, keep_config, make_objective,
    open_study, optimize, with_arch,
)

log = logging.getLogger("search")


def timed_again(study, df, s, p) -> dict:
    """The baselines and their closest searched rivals re-timed together (``search/pick/remeasure.py``); a failure
    is said, never raised: the search's files stay."""
    try:
        return remeasure(study, df, storage=s.storage, cost_model=s.cost_model, out_dir=s.out_dir,
                         input_shape=s.splits.input_shape, example=p.pipeline.calibration.numpy(), tolerance=TOLERANCE,
                         n_val=len(s.splits.val_y))
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


def run(cfg: DictConfig) -> Path:
    """Search, record, write the outputs; returns ``results/<study>/``. PyTorch runs at ``cfg.threads`` threads."""
    with threads(cfg.threads):
        return _run(cfg)


def _run(cfg: DictConfig) -> Path:
    started = time.time()
    for noisy in ("kaleido", "choreographer"):  # PNG export logs every browser step at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    checked = setup(cfg)  # reads the data and fills data.num_classes / data.channels: the config a study stores
    changes = check_resume(cfg, Path(cfg.results_dir) / str(cfg.study.name))  # before anything is written
    p = prepare(cfg, checked)
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
    keep_config(cfg, s.out_dir, changes)
    if changes:
        log.info(f"resumed with other settings (study.resume=force) at {', '.join(changes)}; the earlier config "
                 "is kept beside config.yaml")
    if (n := fail_interrupted(study, s.storage)):
        log.info(f"resuming {study.study_name!r}: {n} interrupted trial(s) recorded as FAIL")
    guide = guidance(cfg, p, s.out_dir, log=log.info)
    if cfg.study.baselines:
        enqueue_baselines(study, {**policies(s.space, p.teacher), **with_arch(s.space, guide.anchors)})
    objective = make_objective(p.pipeline, s.space, s.constraints, p.val_accuracy, s.early_stopping,
                               s.screening if s.screening.enabled else None, artifacts=store(s.out_dir))
    searching = time.time()
    timeout = cfg.study.timeout_s  # for the whole search stage: the baselines and the searched trials

    def left() -> float | None:
        return None if timeout is None else max(1.0, timeout - (time.time() - searching))

    optimize(study, objective, n_trials=0, timeout_s=left(), log=log.info)  # the baselines first
    after_baselines = trials_frame(study)
    for line in near_chance(after_baselines, s.space, classes=s.splits.num_classes):
        log.info(line)
    if not already_guided(study):
        def size_of(params: dict) -> int:  # exact packed bytes of a configuration, without training it
            return len(p.pipeline.materialize(p.pipeline.untrained(with_arch(s.space, {0: params})[0])).packed)

        configs = guided(cfg, guide, after_baselines, log=log.info, size_of=size_of)
        enqueue_guided(study, with_arch(s.space, dict(enumerate(configs))), refines=guide.refines)
    optimize(study, objective, n_trials=int(cfg.study.n_trials), timeout_s=left(), log=log.info)
    search_s = time.time() - searching

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
        "study": study.study_name, "storage": s.storage, "model": cfg.model.name, "teacher_source": p.source,
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
