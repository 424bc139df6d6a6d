"""Where a study lives (``study.storage``): the URL a config names, and the Optuna storage object behind it.

- ``null``: ``sqlite:///<results_dir>/<study>/study.db``, one process at a time (the default); or, where that
  folder holds a ``journal.log`` and no ``study.db``, that journal (a study searched with ``study.workers=N``).
- ``journal`` or ``journal:<file>``: Optuna's journal storage (``JournalFileBackend``), several processes on one
  host without a database server; ``journal`` alone is ``<results_dir>/<study>/journal.log``.
- ``postgresql`` alone: the local PostgreSQL cluster under ``<results_dir>/postgres/`` (``search/workers/local.py``),
  started when needed.
- ``postgresql+psycopg://user@host:port/db`` (or any SQLAlchemy URL): Optuna's RDB storage with heartbeats
  (``study.heartbeat_interval``, ``study.grace_period``): many hosts on one study. Its connections are checked
  before use (``pool_pre_ping``) and a call that meets a dropped connection is retried while the server comes back
  (``Reconnecting``), so a database restart mid-search does not stop the workers.

Every command (search, pick, report, dashboard) opens a study through ``backend(url)``: one storage object per URL
and process.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage

from .faults import LOST, mark, on_lost
from .postgres import LocalPostgres

log = logging.getLogger("search")

JOURNAL = "journal"
LOCAL_POSTGRES = "postgresql"
RECONNECT_S = 120.0  # how long a call waits for the database to come back before it gives up


def is_journal(url: str) -> bool:
    return url == JOURNAL or url.startswith(f"{JOURNAL}:")


def journal_path(url: str) -> Path:
    return Path(url.split(":", 1)[1])


def is_server(url: str) -> bool:
    """A storage many hosts reach (a database server): heartbeats mark a lost worker's trial there."""
    return "://" in url and not url.startswith("sqlite")


def url_for(storage: str | None, *, results_dir: str | Path, name: str, workers: int = 1) -> str:
    """The storage URL of ``study.storage=storage`` for study ``name`` (see the module's docstring). ``workers`` > 1
    with no storage named: the study's journal (several processes; SQLite is one process's storage)."""
    out_dir = Path(results_dir) / name
    if storage in (None, ""):
        journal, db = out_dir / "journal.log", out_dir / "study.db"
        if workers > 1 and db.is_file():
            raise ValueError(f"study.workers={workers}: study {name!r} lives in {db} (SQLite: one process's storage); "
                             "resume it with study.workers=1, or name another study.name")
        if workers > 1 or (journal.is_file() and not db.is_file()):
            return f"{JOURNAL}:{journal.as_posix()}"
        return f"sqlite:///{db.as_posix()}"
    storage = str(storage)
    if storage == JOURNAL:
        return f"{JOURNAL}:{(out_dir / 'journal.log').as_posix()}"
    if is_journal(storage):
        if not storage.split(":", 1)[1]:
            raise ValueError(f"study.storage={storage}: name the journal file, e.g. journal:/shared/study.log")
        return storage
    if storage == LOCAL_POSTGRES:
        return LocalPostgres(Path(results_dir) / "postgres").url()
    if "://" not in storage:
        raise ValueError(f"study.storage={storage}: not a storage; allowed: null (SQLite in the study's folder), "
                         "journal, journal:<file>, postgresql (a local server under results/), or a URL such as "
                         "postgresql+psycopg://user@host:5432/db")
    return storage


def _dropped(exc: BaseException) -> bool:
    """Whether ``exc`` is a lost database connection (worth retrying), not a bad query or value."""
    import sqlalchemy.exc as sa

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (sa.OperationalError, sa.InterfaceError)) or \
                isinstance(seen, sa.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Reconnecting, *args: Any, **kwargs: Any) -> Any:
        waited, pause = 0.0, 0.5
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if not _dropped(exc) or waited >= self.reconnect_s:
                    raise
                if waited == 0:
                    log.info(f"storage: connection lost ({type(exc).__name__}); retrying for up to "
                             f"{self.reconnect_s:.0f} s")
                time.sleep(pause)
                waited, pause = waited + pause, min(pause * 2, 5.0)
    return call


class Reconnecting(RDBStorage):
    """Optuna's RDB storage whose calls survive a database restart: each public call that meets a dropped
    connection waits and tries again (up to ``reconnect_s``), the pool re-opening its connections. A write is
    retried only when it failed to reach the server, so nothing is written twice but in the rare case of a
    connection lost during a commit (the server's answer is then unknown)."""

    def __init__(self, url: str, *, reconnect_s: float = RECONNECT_S, **kwargs: Any) -> None:
        self.reconnect_s = reconnect_s
        engine = {"pool_pre_ping": True, **kwargs.pop("engine_kwargs", {})}
        _retrying(RDBStorage.__init__)(self, url, engine_kwargs=engine, **kwargs)


# every call Optuna (and its cache, _CachedStorage, which calls some private ones) makes of an RDB storage
for _name in [*BaseStorage.__abstractmethods__, "record_heartbeat", "_get_stale_trial_ids", "get_all_versions",
              "get_current_version", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
              "get_trial_param", "get_best_trial", "upgrade", "_create_new_trial", "_get_best_trial_id", "_get_trials",
              "_set_trial_param"]:
    if hasattr(RDBStorage, _name):
        setattr(Reconnecting, _name, _retrying(getattr(RDBStorage, _name)))


def _stale_ids(self: Reconnecting, study_id: int) -> list[int]:
    """The trials whose heartbeat stopped (Optuna fails them next), each first given its reason, ``worker lost``."""
    ids = Reconnecting._stale(self, study_id)
    for trial_id in ids:
        mark(self, trial_id, f"{LOST}: no heartbeat for {self.grace_period} s (study.grace_period)")
    return ids


Reconnecting._stale = Reconnecting._get_stale_trial_ids
Reconnecting._get_stale_trial_ids = _stale_ids


@functools.cache
def _open(url: str, heartbeat_interval: int | None, grace_period: int | None) -> BaseStorage:
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if not is_server(url):
        return RDBStorage(url)
    beats = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period,
             "heartbeat_stale_trial_callback": on_lost} if heartbeat_interval else {}
    try:
        return Reconnecting(url, **beats)
    except ModuleNotFoundError as exc:
        raise ValueError(f"study.storage={url}: needs the database driver {exc.name!r} "
                         f"(uv pip install {exc.name})") from exc
    except Exception as exc:
        raise ValueError(f"study.storage={url}: cannot open it ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc


def backend(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None) -> BaseStorage:
    """The storage of ``url`` (from ``url_for``), opened once per process. On a database server, trials record a
    heartbeat every ``heartbeat_interval`` s, and one silent for ``grace_period`` s is failed as ``worker lost``
    (``search/storage/faults.py``); a later call with no heartbeat settings reuses the storage already open."""
    if heartbeat_interval is None:
        for (u, h, g) in _opened:
            if u == url:
                return _open(u, h, g)
    _opened.add((url, heartbeat_interval, grace_period))
    return _open(url, heartbeat_interval, grace_period)


_opened: set[tuple[str, int | None, int | None]] = set()


def load_study(name: str, url: str) -> optuna.Study:
    """The study ``name`` in ``url`` (a KeyError if it has none)."""
    return optuna.load_study(study_name=name, storage=backend(url))
