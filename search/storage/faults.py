"""A worker that dies mid-trial: its trial is failed with the reason ``worker lost`` and run again.

Each trial records which process runs it (user attribute ``worker``: host, pid and the process's start time). Two
ways find a lost one: on a database server, Optuna's heartbeats (a RUNNING trial silent for ``study.grace_period``
seconds, ``search/storage/backends.py``); on one host (SQLite, journal), the recorded process no longer exists.
Every worker checks both every ``study.heartbeat_interval`` seconds in a background thread (``Watcher``), so a lost
trial is failed within the grace period even while the others are busy. The failed trial keeps its reason; a copy
with the same parameters is enqueued (``retry_of``: the lost trial's number), ``study.retries`` times at most, and
the copy, not the lost trial, counts in ``study.n_trials``.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import warnings
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from spaces import FIXED_ARCH

log = logging.getLogger("search")

LOST = "worker lost"
WORKER = "worker"
KEPT = ("baseline", "guided", "refines", FIXED_ARCH)  # what a retry keeps of the lost trial's attributes
_settings = {"retries": 1}


def configure(*, retries: int) -> None:
    """How many times a lost trial is run again (``study.retries``)."""
    _settings["retries"] = int(retries)


def _started(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc), to tell it from a later process with its pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def identity() -> dict[str, Any]:
    """This process, as a trial records it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _started(os.getpid())}


def alive(worker: Any) -> bool | None:
    """Whether the recorded process still runs: None where this host cannot tell (another host, no record)."""
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname() or "pid" not in worker:
        return None
    started = _started(int(worker["pid"]))
    return started is not None and (worker.get("started") is None or started == worker["started"])


def mark(storage: BaseStorage, trial_id: int, reason: str) -> None:
    """The trial's ``error`` attribute, where it is still running (another worker may have closed it first)."""
    try:
        storage.set_trial_user_attr(trial_id, "error", reason)
    except UpdateFinishedTrialError:
        pass


def retry(study: optuna.Study, trial: FrozenTrial) -> int | None:
    """Enqueue a copy of the lost ``trial`` (its parameters, its role), unless it is a retry ``study.retries`` times
    over already; the retry's number of tries, or None."""
    n = int(trial.user_attrs.get("retry", 0)) + 1
    if n > _settings["retries"] or not trial.params:
        return None
    kept = {k: v for k, v in trial.user_attrs.items() if k in KEPT}
    study.enqueue_trial(trial.params, user_attrs={**kept, "retry_of": trial.number, "retry": n})
    log.info(f"trial {trial.number}: {LOST}; enqueued again (try {n + 1} of {_settings['retries'] + 1})")
    return n


def on_lost(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's ``failed_trial_callback``: the heartbeat failed ``trial`` (its reason set just before)."""
    retry(study, trial)


def fail_dead(study: optuna.Study, storage: BaseStorage, *, reason: str, again: bool) -> list[int]:
    """Fail the RUNNING trials whose recorded process on this host has ended (with ``reason``); with ``again``,
    enqueue each one again (``retry``). Returns their numbers."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if alive(t.user_attrs.get(WORKER)) is not False:
            continue
        mark(storage, t._trial_id, reason)
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue
        failed.append(t.number)
        if again:
            retry(study, storage.get_trial(t._trial_id))
    return failed


def sweep(study: optuna.Study, storage: BaseStorage) -> None:
    """One check for lost workers: heartbeats (on a server) and ended processes on this host."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    fail_dead(study, storage, reason=f"{LOST}: its process on {socket.gethostname()} ended", again=True)


class Watcher:
    """A daemon thread that runs ``sweep`` every ``interval`` seconds while a worker searches."""

    def __init__(self, study: optuna.Study, storage: BaseStorage, interval: float) -> None:
        self.study, self.storage, self.interval = study, storage, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lost-workers", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                sweep(self.study, self.storage)
            except Exception as exc:  # noqa: BLE001 - a failed check is tried again at the next interval
                log.debug(f"lost-worker check failed: {exc}")

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
