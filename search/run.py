"""``run(cfg)``: everything ``python -m search`` does, as a plain function.

All user input is checked before anything is written, so a bad config leaves no trace.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from .app import prepare, setup, threads, versions
from .baselines import near_chance, policies
from .cli import BAD_INPUT
from .front import TOLERANCE, baseline_dominance, hypervolume, misses, reference
from .outputs import students_summary, trials_frame, write_json, write_tables
from .pick.remeasure import remeasure, store
from .pick.verify import between_readings
from .report.write import after_search
from .report.plots import write_pareto_figures
from .screening import counts, kendall
from .sensitivity.plan import guidance, guided
from ._checks import flat
from .study import (
    already_guided, check_resume, config_changes, enqueue_baselines, enqueue_guided, fail_interrupted, keep_config,
    make_objective, open_study, optimize, timed_out, with_arch,
)
from .workers.faults import Watcher, configure
from .workers.lock import StudyLock
from .workers.shared import artifact_store, fetch, publish
from .workers.storage import backend, is_journal, journal_path, load_study, url_for

log = logging.getLogger("search")
CONFIG = "config"  # study user attribute: the config the study was started with, flat (workers joining compare)


def timed_again(study, df, s, p) -> dict:
    """The baselines and their closest searched rivals re-timed together (``search/pick/remeasure.py``); a failure
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


def run(cfg: DictConfig, *, finish: bool = True) -> Path:
    """Search, record, write the outputs; returns ``results/<study>/``. PyTorch runs at ``cfg.threads`` threads.
    ``study.workers`` > 1: that many worker processes on one study (``search/workers/local.py``). ``finish=False``:
    the search only, no tables, figures or report (a worker whose launcher writes them)."""
    if cfg.study.get("workers", 1) != 1:
        from .workers.local import launch

        return launch(cfg)
    with threads(cfg.threads):
        return _run(cfg, finish=finish)


def joined_config(study_name: str, storage, cfg: DictConfig) -> dict:
    """What a worker joining an existing study changes of the study's recorded config (``config_changes``: the
    keys a resume may change left out); one line naming them unless ``study.resume=force``. Reads only."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return {}
    stored = storage.get_study_user_attrs(study_id).get(CONFIG)
    if not stored:
        return {}
    changes = config_changes(stored, OmegaConf.to_container(cfg, resolve=True))
    if changes and cfg.study.get("resume") != "force":
        shown = "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in list(changes.items())[:4])
        more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
        raise ValueError(f"study.name={study_name}: this worker's config differs from the study's ({shown}{more}); "
                         "start it with the study's settings, or set study.resume=force")
    return changes


def prefetch(cfg: DictConfig) -> None:
    """Before setup, the files a study of many workers shares (``search/workers/shared.py``), where it exists on a
    storage other processes reach: what setup itself reads (a lookup table) must be here first."""
    name = str(cfg.study.name)
    url = url_for(cfg.study.storage, results_dir=cfg.results_dir, name=name, workers=int(cfg.study.get("workers", 1)))
    if url.startswith("sqlite") or (is_journal(url) and not journal_path(url).is_file()):
        return
    if name not in optuna.get_all_study_names(backend(url)):
        return
    fetch(load_study(name, url), artifact_store(cfg.study.get("artifacts"), Path(cfg.results_dir) / name),
          Path(cfg.results_dir))


def _drop_if_empty(name: str, url: str) -> None:
    """Delete study ``name`` from ``url`` if it holds no trial (created by a run that was then refused)."""
    try:
        study = load_study(name, url)
        if not study.get_trials(deepcopy=False):
            optuna.delete_study(study_name=name, storage=backend(url))
    except Exception:  # noqa: BLE001 - nothing there, or the storage itself is what was refused
        pass


def reseeded(cfg: DictConfig):
    """Worker ``study.worker=i``'s sampler: the configured one seeded with ``study.seed + i`` (the study's config,
    compared when workers join, stays the same)."""
    from omegaconf import open_dict

    from .app import _instantiate

    sampler_cfg = OmegaConf.create(OmegaConf.to_container(cfg.sampler, resolve=True))
    if "seed" in sampler_cfg:
        with open_dict(sampler_cfg):
            sampler_cfg.seed = int(cfg.study.seed) + int(cfg.study.worker)
        return _instantiate(sampler_cfg, "sampler")
    sampler = _instantiate(sampler_cfg, "sampler")
    sampler.reseed_rng()  # no seed to set: a random one
    return sampler


def settled(study, seconds: float | None) -> None:
    """Wait (up to ``seconds``) until no baseline runs: other workers' baselines, which the guided start reads."""
    waited = 0.0
    while any("baseline" in t.user_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        if seconds is not None and waited >= seconds:
            return
        time.sleep(2.0)
        waited += 2.0


def _run(cfg: DictConfig, *, finish: bool = True) -> Path:
    started = time.time()
    for noisy in ("kaleido", "choreographer"):  # PNG export logs every browser step at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    prefetch(cfg)  # a worker joining from elsewhere: a lookup table its cost model reads at setup
    checked = setup(cfg)  # reads the data and fills data.num_classes / data.channels: the config a study stores
    s, name = checked, str(cfg.study.name)
    if int(cfg.study.get("worker") or 0):  # workers started together must not sample the same configurations
        s.sampler = reseeded(cfg)
    changes = check_resume(cfg, Path(cfg.results_dir) / name)  # before anything is written
    made = s.out_dir if not s.out_dir.exists() else None  # the outermost folder this run will create
    while made is not None and not made.parent.exists():
        made = made.parent
    created = False
    try:
        if s.storage.startswith("sqlite"):
            s.out_dir.mkdir(parents=True, exist_ok=True)  # the study's database file lives there
        storage = backend(s.storage, heartbeat_interval=int(cfg.study.heartbeat_interval),
                          grace_period=int(cfg.study.grace_period))
        changes = {**changes, **joined_config(name, storage, cfg)}
        configure(retries=int(cfg.study.retries))
        lock = StudyLock(s.storage, name)
        artifacts = artifact_store(cfg.study.artifacts, s.out_dir)
        with lock:  # one worker prepares what all share; the next ones find it done (or fetch it)
            created = name not in optuna.get_all_study_names(storage)
            study = open_study(name=name, storage=storage, sampler=s.sampler, objectives=s.objectives)
            fetched = fetch(study, artifacts, Path(cfg.results_dir))
            if fetched:
                log.info(f"fetched from the study's artifact store: {', '.join(fetched)}")
            p = prepare(cfg, checked, test=finish)
            s.out_dir.mkdir(parents=True, exist_ok=True)
            described = s.cost_model.describe()
            recorded = study.user_attrs.get("cost_model")
            keys = ("cost_model", "device", "batch_size", "threads", "runtime", "dtype")
            changed = {k: (recorded[k], described[k]) for k in keys if recorded and k in recorded and k in described
                       and recorded[k] != described[k]}
            if changed:
                raise ValueError(
                    f"hardware: study {study.study_name!r} holds latencies measured otherwise ({changed}, recorded vs now); "
                    "mixing them would compare unlike numbers: choose another study.name (a worker on another "
                    "kind of machine: search with the target's lookup table, hardware=lut, or hardware=analytic)"
                )
            study.set_user_attr("cost_model", described)  # which cost model produced the latency objective
            study.set_user_attr(CONFIG, flat(OmegaConf.to_container(cfg, resolve=True)))
            keep_config(cfg, s.out_dir, changes)
            if changes:
                log.info(f"resumed with other settings (study.resume=force) at {', '.join(changes)}; the earlier config "
                         "is kept beside config.yaml")
            if (n := fail_interrupted(study, s.storage)):
                log.info(f"resuming {study.study_name!r}: {n} interrupted trial(s) recorded as FAIL")
            guide = guidance(cfg, p, s.out_dir, log=log.info)
            publish(study, artifacts, Path(cfg.results_dir),
                    [*p.files, s.out_dir / "sensitivity.csv", s.out_dir / "sensitivity.json",
                     *([Path(s.cost_model.path)] if getattr(s.cost_model, "path", None) else [])])
            if cfg.study.baselines:
                enqueue_baselines(study, {**policies(s.space, p.teacher), **with_arch(s.space, guide.anchors)})
    except BAD_INPUT:  # refused: nothing of this run stays (a study it created, a folder it made)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        if created:
            _drop_if_empty(name, s.storage)
        raise
    objective = make_objective(p.pipeline, s.space, s.constraints, p.val_accuracy, s.early_stopping,
                               s.screening if s.screening.enabled else None, artifacts=artifacts)
    searching = time.time()
    timeout = cfg.study.timeout_s  # for the whole search stage: the baselines and the searched trials

    def left() -> float | None:
        return None if timeout is None else max(1.0, timeout - (time.time() - searching))

    with Watcher(study, storage, interval=float(cfg.study.heartbeat_interval)):
        optimize(study, objective, n_trials=0, timeout_s=left(), log=log.info, lock=lock)  # the baselines first
        settled(study, left())
        with lock:
            if not already_guided(study):
                after_baselines = trials_frame(study)
                for line in near_chance(after_baselines, s.space, classes=s.splits.num_classes):
                    log.info(line)

                def size_of(params: dict) -> int:  # exact packed bytes of a configuration, without training it
                    return len(p.pipeline.materialize(p.pipeline.untrained(with_arch(s.space, {0: params})[0])).packed)

                configs = guided(cfg, guide, after_baselines, log=log.info, size_of=size_of)
                enqueue_guided(study, with_arch(s.space, dict(enumerate(configs))), refines=guide.refines)
        optimize(study, objective, n_trials=int(cfg.study.n_trials), timeout_s=left(), log=log.info, lock=lock)
    if (line := timed_out(study, timeout)) is not None:
        log.warning(line)
    if not finish:
        return s.out_dir
    return _finish(cfg, Searched(s, p, study, guide), started=started, search_s=time.time() - searching)


@dataclass
class Searched:
    """What the end of a search reads: the setup, the prepared pipeline, the study and its guidance."""

    setup: Any
    prepared: Any
    study: Any
    guide: Any


def finish(cfg: DictConfig, *, started: float, workers: int = 1) -> Path:
    """The end of a search its workers ran (``search/workers/local.py``): the study read back, the teacher and the
    sensitivity table from their caches, then the same tables, figures, summary and report as one process writes."""
    with threads(cfg.threads):
        s = setup(cfg)
        p = prepare(cfg, s)
        study = load_study(str(cfg.study.name), s.storage)
        guide = guidance(cfg, p, s.out_dir, log=log.info)
        return _finish(cfg, Searched(s, p, study, guide), started=started, search_s=time.time() - started,
                       workers=workers)


def _finish(cfg: DictConfig, done: Searched, *, started: float, search_s: float, workers: int = 1) -> Path:
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
