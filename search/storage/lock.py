"""One lock per study, held in (or beside) its storage, that every worker of the study shares.

A worker holds it to prepare what all share (teacher, logits, sensitivity table, baselines, the guided start: the
first worker does it, the others find it done) and for the moment it takes to claim a trial within
``study.n_trials`` (so the study's total is never overrun). On PostgreSQL it is a session-level advisory lock
(``pg_advisory_lock``: released by the server when the holder's connection ends, so a killed worker never leaves
it held); for SQLite and the journal, which live in one host's files, an ``fcntl`` lock on a file beside them
(released by the kernel when the holder dies).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from pathlib import Path

from .backends import _dropped, is_journal, is_server, journal_path


def _key(name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock``, from the study name."""
    return int.from_bytes(hashlib.sha256(f"compress-search:{name}".encode()).digest()[:8], "big", signed=True)


class StudyLock:
    """``with StudyLock(url, name):`` holds the study's lock across processes and hosts; re-entrant within a
    thread, so a holder may claim trials while it prepares."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self._local = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._conn = None
        self._engine = None
        if is_server(self.url) and not self.url.startswith("postgresql"):
            raise ValueError(f"study.storage={url}: workers share a lock on PostgreSQL, SQLite or the journal; "
                             "use postgresql+psycopg://...")

    def _file(self) -> Path:
        if is_journal(self.url):
            return Path(f"{journal_path(self.url)}.study-lock")
        return Path(f"{self.url.split(':///', 1)[1]}.study-lock")

    def acquire(self) -> None:
        self._local.acquire()
        self._depth += 1
        if self._depth > 1:
            return
        try:
            if is_server(self.url):
                self._server_lock()
            else:
                path = self._file()
                path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._depth -= 1
            self._local.release()
            raise

    def _server_lock(self) -> None:
        import sqlalchemy

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
        waited = 0.0
        while True:  # the database may be restarting: wait for it like the storage does
            try:
                self._conn = self._engine.connect()
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _key(self.name)})
                return
            except Exception as exc:
                self._close()
                if not _dropped(exc) or waited > 120:
                    raise
                time.sleep(1.0)
                waited += 1.0

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - a connection already gone released the lock with it
                pass
            self._conn = None

    def release(self) -> None:
        self._depth -= 1
        try:
            if self._depth == 0:
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    os.close(self._fd)
                    self._fd = None
                if self._conn is not None:
                    import sqlalchemy

                    try:
                        self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _key(self.name)})
                    except Exception:  # noqa: BLE001 - a lost connection has released the lock on the server
                        pass
                    self._close()
        finally:
            self._local.release()

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
