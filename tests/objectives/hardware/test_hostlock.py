"""The host lock serialises processes, shows that it does (without it, or on different files, they overlap), never
outlives a killed holder, and tells a caller how long it waited."""
from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import tempfile
import threading
import time

import pytest

from objectives.hardware._hostlock import DEFAULT_PATH, host_lock, lock_path, neighbours
from tests.objectives.hardware.lock_holder import ask, hold, hold_forever

HOLD_S = 0.5


def holds(paths: list[str | None]) -> list[tuple[float, float]]:
    """(start, end) of each spawned process's hold, sorted; all of them ask for their lock at the same moment."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(len(paths)), ctx.Queue()
    procs = [ctx.Process(target=hold, args=(p, HOLD_S, barrier, out)) for p in paths]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0
    return got


def overlap(intervals: list[tuple[float, float]]) -> bool:
    return any(later[0] < earlier[1] for earlier, later in zip(intervals, intervals[1:]))


def test_two_processes_on_one_lock_file_never_hold_it_at_once(tmp_path):
    first, second = holds([str(tmp_path / "latency.lock")] * 2)
    assert not overlap([first, second])
    assert second[0] - first[0] >= HOLD_S * 0.9  # the second waited for the first to finish


@pytest.mark.parametrize("lock", ["none", "different files"])
def test_without_one_shared_lock_file_they_overlap(tmp_path, lock):
    paths = [None, None] if lock == "none" else [str(tmp_path / "a.lock"), str(tmp_path / "b.lock")]
    assert overlap(holds(paths))  # what the test above would see if the lock did nothing


def test_a_holder_killed_with_sigkill_leaves_the_lock_free(tmp_path):
    path = str(tmp_path / "latency.lock")
    ctx = multiprocessing.get_context("spawn")
    held = ctx.Event()
    proc = ctx.Process(target=hold_forever, args=(path, held))
    proc.start()
    try:
        assert held.wait(timeout=30)
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # really held, by the other process
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout=10)
            assert proc.exitcode == -signal.SIGKILL
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again: would raise (not hang) otherwise
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        if proc.is_alive():
            proc.kill()
    assert os.path.exists(path)  # the file stays, and is harmless
    with host_lock(path) as waited:
        assert waited < 1.0


def test_the_wait_is_measured_and_threads_exclude_each_other(tmp_path):
    path = str(tmp_path / "latency.lock")
    taken = threading.Event()

    def neighbour() -> None:
        with host_lock(path):
            taken.set()
            time.sleep(0.3)

    t = threading.Thread(target=neighbour)
    t.start()
    taken.wait(timeout=5)
    with host_lock(path) as waited:
        assert 0.2 < waited < 5
    t.join()


def test_a_nested_acquisition_by_the_holder_passes_through(tmp_path):
    path = str(tmp_path / "latency.lock")
    with host_lock(path) as outer:
        with host_lock(str(tmp_path / "." / "latency.lock")) as inner:  # would wait for itself forever
            assert inner == 0.0
        assert outer >= 0.0
    with host_lock(None) as none:
        assert none is None


def test_a_child_of_the_holder_passes_through(tmp_path):
    """A cost model that measures in a process it starts while holding the lock: without the pass-through the
    child waits for its parent, which waits for the child, forever."""
    path = str(tmp_path / "latency.lock")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    with host_lock(path):
        child = ctx.Process(target=ask, args=(path, out))
        child.start()
        try:
            assert out.get(timeout=30) == 0.0
        finally:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    assert child.exitcode == 0


def test_the_setting_names_a_file_or_none():
    assert lock_path(True) == DEFAULT_PATH and DEFAULT_PATH.startswith(tempfile.gettempdir())
    assert lock_path(False) is None
    assert lock_path("/tmp/x.lock") == "/tmp/x.lock" and lock_path("x.lock") == os.path.abspath("x.lock")
    assert neighbours(None) == "none" and neighbours("/tmp/x.lock") == "host lock /tmp/x.lock"


@pytest.mark.parametrize("value", [1, 0, None, "", "  ", "/no/such/folder/x.lock", ["/tmp/x.lock"]])
def test_a_bad_setting_is_a_one_line_error_naming_the_key(value):
    with pytest.raises(ValueError, match=r"^hardware\.host_lock") as err:
        lock_path(value)
    assert "\n" not in str(err.value) and repr(value) in str(err.value)
