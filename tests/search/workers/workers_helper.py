"""A worker process for tests/search/workers/test_workers.py: the engine's own claim loop, lock and lost-worker watcher
around a toy objective (seconds per trial), so faults are tested without training anything."""
from __future__ import annotations

import time

import optuna

from search.loop.study import optimize
from search.storage.faults import Watcher, configure
from search.storage.lock import StudyLock
from search.storage.backends import backend


def toy_worker(url: str, name: str, n_trials: int, seconds: float, hang: bool = False) -> None:
    """Search study ``name`` until ``n_trials`` searched trials are claimed; ``hang``: its first trial never ends."""
    configure(retries=1)
    storage = backend(url, heartbeat_interval=1, grace_period=3)
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    first = [hang]

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if first[0]:
            first[0] = False
            time.sleep(600)
        time.sleep(seconds)
        return x

    with Watcher(study, storage, interval=1.0):
        optimize(study, objective, n_trials=n_trials, timeout_s=300, lock=StudyLock(url, name))
