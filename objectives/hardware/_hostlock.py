"""One latency measurement at a time on this host: an exclusive ``flock`` on a lock file all processes share.

Several search workers on one host (one study, ``study.share=true``) each time their trials; two timings at
the same moment share the cores, the caches and the memory bandwidth and both read slow. Every measuring
cost model holds this lock around its settle pause and its timed runs, so measurements queue instead.

Why ``flock``: the kernel drops the lock when its descriptor closes, including when the process dies
(``kill -9``), so a dead worker never leaves it held and a lock file left on disk is harmless (the lock lives
on the open file, not on the file's existence). The file is opened anew on every acquisition: ``flock``
locks belong to an open file description, so two threads of one process exclude each other too. A nested
acquisition of the same path by the thread already holding it passes straight through (it would otherwise
wait for itself forever), and so does one by a process whose parent (or grandparent...) holds it: a cost model
that measures in a worker process it starts inside its own hold (a fresh interpreter, a runtime's thread pool)
would otherwise wait for its parent, which waits for it. The holder is read from ``/proc/locks`` (Linux); where
that file is missing, such a child waits as any other process would.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_PATH = str(Path(tempfile.gettempdir()) / "compress-search-latency.lock")

_held = threading.local()  # the lock paths this thread holds now


def lock_path(setting: bool | str, key: str = "hardware.host_lock") -> str | None:
    """The lock file a ``host_lock`` setting names: True the default path, a string that path (made absolute: the
    processes sharing it may run from different folders), False none."""
    if setting is True:
        return DEFAULT_PATH
    if setting is False:
        return None
    if not isinstance(setting, str) or not setting.strip():
        raise ValueError(f"{key} must be true, false or a lock file path, got {setting!r}")
    if not Path(setting).parent.is_dir():
        raise ValueError(f"{key}: the folder of lock file {setting!r} does not exist; name a file in an existing one")
    return os.path.abspath(setting)


def neighbours(path: str | None) -> str:
    """How a measuring cost model keeps out of its neighbours' way, as its ``describe()`` states it."""
    return f"host lock {path}" if path else "none"


@contextmanager
def host_lock(path: str | None) -> Iterator[float | None]:
    """Hold the exclusive lock on ``path`` for the duration; yields the seconds waited for it (None: no lock).

    The file is opened read-only where it exists: a file another user created in a sticky ``/tmp`` may be
    opened but not re-created there (``fs.protected_regular``), and ``flock`` needs no write access.
    """
    if path is None:
        yield None
        return
    held = getattr(_held, "paths", None)
    if held is None:
        held = _held.paths = set()
    key = os.path.realpath(path)
    if key in held:
        yield 0.0
        return
    start = time.perf_counter()
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if held_by_ancestor(fd):  # our parent holds it and waits for us: measuring is ours to do
                yield 0.0
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield time.perf_counter() - start
        finally:
            held.discard(key)
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def held_by_ancestor(fd: int) -> bool:
    """Whether a ``flock`` on the file open at ``fd`` is held by one of this process's ancestors (``/proc/locks``
    names each lock's process and file as ``major:minor:inode``)."""
    st = os.fstat(fd)
    file = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return False
    holders = {int(f[4]) for f in (line.split() for line in lines)
               if len(f) >= 6 and f[1] == "FLOCK" and f[5] == file and f[4].isdigit()}
    return bool(holders & ancestors())


def ancestors() -> set[int]:
    """The process ids above this one, up to (not including) pid 0."""
    found, pid = set(), os.getppid()
    while pid > 0 and pid not in found:
        found.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm) state": the parent's pid
    return found
