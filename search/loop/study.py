"""The Optuna study: the configured objectives, baselines enqueued first, failures recorded, resumable by name."""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState
from tqdm import tqdm

from objectives import BaseObjective
from spaces import ARCH, FIXED_ARCH, JointSpace, StudentSpace

from ..storage import _optuna
from .._checks import flat, under
from ..data import upgraded
from ..results.front import hypervolume, reference, signs
from ..results.outputs import atomic_write, trials_frame
from ..storage.artifacts import ONNX, keep
from ..pipeline import Pipeline
from .screening import FULL, PREFIX, SCREEN, Screening, promotes, screened_points
from ..training.early_stopping import EarlyStopping, Monitor
from ..storage.faults import WORKER, alive, identity

FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
# The keys a resumed study may change: how long it runs, where it is stored and what it writes, not how a trial is
# built, trained or measured (data.stream and its settings change how images are read, not what they are;
# hardware.host_lock when a measurement may start, not how it times; the study.* keys of many workers where it is
# stored and who runs it). Any other key that differs from the study's config.yaml refuses the resume.
RESUMABLE = ("study.n_trials", "study.timeout_s", "study.resume", "study.storage", "study.share", "study.artifacts",
             "study.workers", "study.worker", "study.heartbeat_interval", "study.grace_period", "study.retries", "results_dir", "png",
             "report", "pick", "data.download_dir", "data.stream", "data.workers", "data.memory_limit_mb", "threads",
             "hydra", "hardware.host_lock")
RESUME = (None, "force")  # study.resume: null (resume only with the same settings) or force (resume anyway)


def config_changes(stored: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (stored value, value now)} of the keys a resumed study may not change (all but ``RESUMABLE``'s);
    a key one side lacks reads ``<absent>``."""
    a, b = flat(dict(stored)), flat(dict(now))
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in dict.fromkeys((*a, *b))
            if not under(k, RESUMABLE) and a.get(k, "<absent>") != b.get(k, "<absent>")}


def check_resume(cfg: DictConfig, out_dir: Path) -> dict[str, tuple[Any, Any]]:
    """Where ``out_dir`` already holds a study's config.yaml: the keys ``cfg`` changes (``config_changes``); a
    ValueError naming them unless ``study.resume=force``. Reads only: a refused resume writes nothing."""
    mode = cfg.study.get("resume")
    if mode not in RESUME:
        raise ValueError(f"study.resume must be null or force, got {mode!r}")
    path = Path(out_dir) / "config.yaml"
    if not path.is_file():
        return {}
    stored = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if "data" in stored:  # a study from before the data options: its data section as one written now
        stored["data"] = upgraded(stored["data"])
    stored.setdefault("onnx_int4", "none")  # a study from before the setting stored every ONNX weight at 8 bits
    abits = ((stored.get("space") or {}).get("knobs") or {}).get("abits")
    if isinstance(abits, dict):  # before the int8 paths: static everywhere, which auto is on a CNN
        abits.setdefault("linear", "auto")
    # a setting added since at its null default (data.image_size, ...) changes nothing a stored study did
    changes = {k: v for k, v in config_changes(stored, OmegaConf.to_container(cfg, resolve=True)).items()
               if v != ("<absent>", None)}
    if changes and mode != "force":
        shown = "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in list(changes.items())[:4])
        more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
        raise ValueError(f"study.name={cfg.study.name}: {path.parent} holds a study searched with other settings "
                         f"({shown}{more}); resume with the same settings, choose another study.name, or set "
                         "study.resume=force to resume anyway (both configs are kept)")
    return changes


def keep_config(cfg: DictConfig, out_dir: Path, changes: Mapping[str, Any]) -> None:
    """Write ``cfg`` as the study's config.yaml; one it replaces with other settings (a forced resume) is kept as
    ``config.<n>.yaml``, n counting from 1."""
    path = Path(out_dir) / "config.yaml"
    if changes and path.is_file():
        n = 1
        while (path.parent / f"config.{n}.yaml").exists():
            n += 1
        path.rename(path.parent / f"config.{n}.yaml")
    atomic_write(path, OmegaConf.to_yaml(cfg, resolve=True))


@dataclass(frozen=True)
class Constraints:
    """Optional limits; a trial past one is stored as infeasible (``trial.set_constraint``, <= 0 is feasible)."""

    max_accuracy_drop: float | None = None  # accuracy fraction (0.01 = 1 point) below the uncompressed model
    max_latency_ms: float | None = None
    max_size_bytes: float | None = None

    def __post_init__(self) -> None:
        for key, value in vars(self).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"study.constraints.{key} must be a number >= 0 or null, got {value!r}")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop >= 1:
            raise ValueError(f"study.constraints.max_accuracy_drop is a fraction in [0, 1) (0.01 = 1 point), got "
                             f"{self.max_accuracy_drop!r}")

    def limits(self) -> dict[str, float]:
        """{objective name: the largest value allowed} of the ``max_<objective>`` limits set."""
        return {k.removeprefix("max_"): v for k, v in vars(self).items()
                if v is not None and k != "max_accuracy_drop"}

    def check(self, objectives: list[str]) -> None:
        """Every constraint must name one of the study's objectives."""
        needed = [*self.limits(), *(["accuracy"] if self.max_accuracy_drop is not None else [])]
        for name in needed:
            if name not in objectives:
                key = "max_accuracy_drop" if name == "accuracy" else f"max_{name}"
                raise ValueError(f"study.constraints.{key}: {name} is not an objective of this study {objectives}")

    def violations(self, values: Mapping[str, float], reference_accuracy: float) -> dict[str, float]:
        """{constraint: excess} (<= 0 is feasible), by objective name."""
        out = {}
        if self.max_accuracy_drop is not None:
            out["accuracy_drop"] = (reference_accuracy - values["accuracy"]) - self.max_accuracy_drop
        for name, limit in self.limits().items():
            out[name] = values[name] - limit
        return out


def open_study(*, name: str, storage: str, sampler: optuna.samplers.BaseSampler,
               objectives: Sequence[BaseObjective]) -> optuna.Study:
    """The study ``name`` (created, or loaded to resume): one direction and metric name per objective."""
    names = [o.name for o in objectives]
    directions = [o.direction for o in objectives]
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions,
                                load_if_exists=True)
    if study.metric_names is not None and list(study.metric_names) != names or \
            study.directions != [optuna.study.StudyDirection[d.upper()] for d in directions]:
        raise ValueError(f"objectives: study {name!r} in {storage} has objectives {study.metric_names}, not {names}; "
                         "choose another study.name")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)
    return study


def fail_interrupted(study: optuna.Study, storage: str) -> int:
    """Trials a killed search left RUNNING are closed as FAIL (reason ``interrupted``); finished ones are kept as
    they are, and so are the trials of workers that still run (on this host, or on another: the heartbeat is theirs,
    ``search/storage/faults.py``)."""
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
             if WORKER not in t.user_attrs or alive(t.user_attrs[WORKER]) is False]
    for t in stale:
        _optuna.set_user_attr(storage, study.study_name, t.number, "error",
                              "interrupted: the search stopped during this trial")
        study.tell(t.number, state=TrialState.FAIL)
    return len(stale)


def enqueue_baselines(study: optuna.Study, policies: Mapping[str, dict[str, Any]]) -> list[str]:
    """Enqueue each policy not already finished, waiting or running in the study; returns the names enqueued. A
    running one is another worker's (a killed search's were failed first, ``fail_interrupted``): enqueued again, it
    would run twice."""
    present = {
        t.user_attrs.get("baseline")
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING))
    }
    added = [name for name in policies if name not in present]
    for name in added:
        params = policies[name]
        # a space of students only must still run the baselines on the trained model: say so to its sample()
        fixed = {FIXED_ARCH: params[ARCH]} if ARCH in params else {}
        study.enqueue_trial(params, user_attrs={"baseline": name, **fixed})
    return added


def with_arch(space: JointSpace | StudentSpace, policies: Mapping[Any, dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """Teacher-knob policies as params of ``space``: in a space with students, ``arch = teacher`` in front."""
    if not isinstance(space, StudentSpace):
        return dict(policies)
    return {k: {ARCH: "teacher", **v} for k, v in policies.items()}


def already_guided(study: optuna.Study) -> bool:
    return any("guided" in t.user_attrs for t in study.get_trials(deepcopy=False))


def enqueue_guided(study: optuna.Study, configs: Mapping[int, dict[str, Any]],
                   refines: Mapping[int, str] | None = None) -> int:
    """Enqueue the guided start-up configurations once per study (user attribute ``guided``: their index; ``refines``:
    the baseline one is a step smaller than, where it is); they are searched trials, counted in ``study.n_trials``.
    Returns how many were enqueued."""
    if not configs or already_guided(study):
        return 0
    for i, params in configs.items():
        fixed = {FIXED_ARCH: params[ARCH]} if ARCH in params else {}
        twin = {"refines": refines[i]} if refines and i in refines else {}
        study.enqueue_trial(params, user_attrs={"guided": int(i), **twin, **fixed})
    return len(configs)


def claimed(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Searched trials that count in ``study.n_trials``: running or run to an end, by any worker. Not counted: the
    baselines, trials cut short by an interruption, and a lost worker's trial that was enqueued again (its copy
    counts, ``search/storage/faults.py``)."""
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return sum(
        1 for t in trials
        if t.state != TrialState.WAITING and "baseline" not in t.user_attrs and t.number not in retried
        and not str(t.user_attrs.get("error", "")).startswith("interrupted")
    )


def progress(study: optuna.Study) -> dict[str, Any]:
    """What the progress bar shows after each trial: failures, front size and hypervolume (``front.py``: share of
    the box up to the reference point 1.1 x the uncompressed model's value of each relative objective)."""
    df = trials_frame(study)
    return {"failed": int((df["state"] == "FAIL").sum()), "pruned": int((df["state"] == "PRUNED").sum()),
            "front": int(df["on_front"].sum()),
            "hv": f"{hypervolume(df, reference(df)):.1%}"}


def make_objective(
    pipeline: Pipeline, space: JointSpace | StudentSpace, constraints: Constraints, reference_accuracy: float,
    early_stopping: EarlyStopping | None = None, screening: Screening | None = None, artifacts: Any = None,
) -> Callable[[optuna.Trial], tuple[float, ...]]:
    """The trial function: sample, evaluate, record. A student trial runs under a ``Monitor`` that records its
    learning curve and, with ``early_stopping.enabled``, stops it (PRUNED) when it cannot reach the front. With
    ``screening`` enabled, a searched teacher trial is first evaluated at the low fidelity and fully only when
    promoted (``search/loop/screening.py``); a baseline always runs fully. ``artifacts``: an Optuna artifact store that
    keeps each full-fidelity trial's ONNX model (for the re-timing at the end of a search,
    ``search/loop/remeasure.py``)."""
    rule = early_stopping or EarlyStopping()
    names = [o.name for o in pipeline.objectives]
    low = pipeline.at_low_fidelity(steps=screening.steps, qat_steps=screening.qat_steps) \
        if screening is not None and screening.enabled else None

    def record(trial: optuna.Trial, evaluation: Any) -> tuple[float, ...]:
        for key, value in evaluation.attrs().items():
            trial.set_user_attr(key, value)
        for key, value in constraints.violations(evaluation.values, reference_accuracy).items():
            trial.set_constraint(key, value)
        return tuple(evaluation.values[name] for name in names)

    def screened(trial: optuna.Trial, params: dict[str, Any]) -> tuple[float, ...] | None:
        """Screen the trial; its values if it stays screened-only, None if it goes on to the full fidelity."""
        cheap = low.evaluate(params)
        for name in names:
            trial.set_user_attr(PREFIX + name, cheap.values[name])
        pool = screened_points(trial.study.get_trials(deepcopy=False), names)
        if screening.promote_guided and "guided" in trial.user_attrs:
            return None
        if promotes(cheap.values, pool, names, signs(names), screening.promote_rank):
            return None
        trial.set_user_attr("fidelity", SCREEN)
        return record(trial, cheap)

    def monitor_for(trial: optuna.Trial, params: dict[str, Any]) -> Monitor | None:
        if not (isinstance(space, StudentSpace) and space.is_student(params)):
            return None
        drop = constraints.max_accuracy_drop
        return Monitor(rule=rule, trial=trial, floor=None if drop is None else reference_accuracy - drop,
                       limits=constraints.limits(), objectives=pipeline.objectives)

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        params = space.sample(trial)
        try:
            monitor = monitor_for(trial, params)
            if low is not None and monitor is None and "baseline" not in trial.user_attrs:
                values = screened(trial, params)
                if values is not None:
                    return values
            # a pipeline that trains no students may take params alone (evaluate(params))
            evaluation = pipeline.evaluate(params, monitor) if monitor is not None else pipeline.evaluate(params)
        except optuna.TrialPruned:
            raise  # the monitor recorded why and when
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
            raise
        trial.set_user_attr("fidelity", FULL)
        if artifacts is not None and getattr(evaluation, "onnx", None):
            keep(trial, {ONNX: evaluation.onnx, **getattr(evaluation, "files", {})}, artifacts)
        return record(trial, evaluation)

    return objective


class _Unlocked:
    """The lock of a study no other process searches (``search/storage/lock.py``'s ``StudyLock`` otherwise)."""

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


def timed_out(study: optuna.Study, timeout_s: float | None) -> str | None:
    """The warning for enqueued trials (baselines, guided start) that the time budget left waiting, or None: the
    budget usually ends a search among its sampled trials, as it should, but a busy machine can end it before the
    configurations the comparison rests on ran, and a bare trial count would hide that."""
    unrun = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    if not unrun or timeout_s is None:
        return None
    return (f"study.timeout_s={timeout_s:g} ran out with {unrun} enqueued trials (baselines, guided start) not run: "
            "run the same command again to run them (the study keeps every finished trial), or raise "
            "study.timeout_s (null: no limit)")


def optimize(
    study: optuna.Study, objective: Callable, *, n_trials: int, timeout_s: float | None, log=print, lock: Any = None,
) -> int:
    """Run the waiting trials (the baselines, then any enqueued searched ones, such as the guided start-up, or a
    lost worker's trial enqueued again), then sampled ones until ``n_trials`` searched trials of the study, by any
    worker, are running or done (``claimed``); an enqueued searched trial counts in ``n_trials`` and always runs.

    Each trial is claimed under ``lock`` (the study's, shared by all its workers): the count is read and the trial
    created (``study.ask`` inside Optuna's ``optimize``) while it is held, and the lock is released as the trial
    starts, so workers never overrun ``n_trials`` together. Each trial records the process that runs it
    (``worker``). Once a budget (``n_trials`` > 0) is claimed, a worker stays while another's trial runs: should that worker be lost,
    the trial's copy is enqueued (``search/storage/faults.py``) and run here. Returns the number of trials this call
    ran."""
    lock = lock or _Unlocked()
    trials = study.get_trials(deepcopy=False)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    todo = len(waiting) + max(0, n_trials - claimed(trials) - sum("baseline" not in t.user_attrs for t in waiting))
    if todo == 0:
        if n_trials:
            log(f"study {study.study_name!r} already has {n_trials} searched trials; nothing to run")
        return 0
    bar = tqdm(total=todo, desc="trials", unit="trial", dynamic_ncols=True, mininterval=0)
    started, ran, me = time.time(), 0, identity()

    def show(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.set_postfix(**progress(study), last=trial.state.name, refresh=False)
        bar.update(1)

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        while timeout_s is None or math.isinf(timeout_s) or time.time() - started < timeout_s:
            held = [True]
            lock.acquire()
            try:
                trials = study.get_trials(deepcopy=False)
                if not any(t.state == TrialState.WAITING for t in trials) and claimed(trials) >= n_trials:
                    if not n_trials or not any(t.state == TrialState.RUNNING for t in trials):
                        break
                    # another worker's trial runs: should its worker be lost, its copy is this worker's to run
                    lock.release()
                    held[0] = False
                    time.sleep(1.0)
                    continue

                def claimed_trial(trial: optuna.Trial) -> Any:
                    trial.set_user_attr(WORKER, me)
                    lock.release()  # the trial exists, with its worker: the next worker may claim its own
                    held[0] = False
                    return objective(trial)

                study.optimize(claimed_trial, n_trials=1, catch=(Exception,), callbacks=[show])
                ran += 1
            finally:
                if held[0]:
                    lock.release()
    finally:
        optuna.logging.set_verbosity(verbosity)
        bar.close()
    return ran
