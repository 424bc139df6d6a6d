"""One process's search: the study opened (or joined) under its lock, what every worker shares prepared once
(teacher, logits, sensitivity table, baselines), the guided start after the baselines, then the trials; and, unless
it is one of many workers, the end of the search (``search.finish``). All user input is checked before anything is
written, so a bad config leaves no trace.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import TrialState

from ._checks import BAD_INPUT, flat
from .app import instantiated, prepare, setup
from .finish import Searched, write_outputs
from .loop.baselines import near_chance, policies
from .loop.study import (
    already_guided, check_resume, config_changes, enqueue_baselines, enqueue_guided, fail_interrupted, keep_config,
    make_objective, open_study, optimize, timed_out, with_arch,
)
from .results.outputs import trials_frame
from .sensitivity.plan import guidance, guided, student_starts
from .storage.artifacts import artifact_store, fetch, publish
from .storage.backends import backend, is_journal, journal_path, load_study, url_for
from .storage.faults import Watcher, configure
from .storage.lock import StudyLock

log = logging.getLogger("search")
CONFIG = "config"  # study user attribute: the config the study was started with, flat (workers joining compare)


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
    """Before setup, the files a study of many workers shares (``search.storage.artifacts``), where it exists on a
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
    sampler_cfg = OmegaConf.create(OmegaConf.to_container(cfg.sampler, resolve=True))
    if "seed" in sampler_cfg:
        with open_dict(sampler_cfg):
            sampler_cfg.seed = int(cfg.study.seed) + int(cfg.study.worker)
        return instantiated(sampler_cfg, "sampler")
    sampler = instantiated(sampler_cfg, "sampler")
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


def search(cfg: DictConfig, *, finish: bool = True) -> Path:
    """Search in this process, record, and (``finish``) write the outputs; returns ``results/<study>/``."""
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

                configs = with_arch(s.space, dict(enumerate(guided(cfg, guide, after_baselines, log=log.info,
                                                                  size_of=size_of))))
                for params in student_starts(cfg, s.space, p.teacher, log=log.info):
                    configs[len(configs)] = params
                enqueue_guided(study, configs, refines=guide.refines)
        optimize(study, objective, n_trials=int(cfg.study.n_trials), timeout_s=left(), log=log.info, lock=lock)
    if (line := timed_out(study, timeout)) is not None:
        log.warning(line)
    if not finish:
        return s.out_dir
    return write_outputs(cfg, Searched(s, p, study, guide), started=started, search_s=time.time() - searching)
