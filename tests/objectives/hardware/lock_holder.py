"""What the spawned processes of ``test_hostlock.py`` run: take the host lock, hold it, say when.

``objectives/hardware/_hostlock.py`` is loaded from its file, not through the ``objectives`` package: a fresh process
then starts in half a second instead of the five it takes to import torch and ONNX Runtime.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "hostlock_alone", Path(__file__).resolve().parents[3] / "objectives" / "hardware" / "_hostlock.py")
hostlock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hostlock)


def hold(path: str | None, seconds: float, barrier, out) -> None:
    """Once every process is ready (``barrier``), hold the lock ``seconds``; put (start, end) of the hold on ``out``."""
    barrier.wait()
    with hostlock.host_lock(path):
        start = time.time()
        time.sleep(seconds)
        out.put((start, time.time()))


def hold_forever(path: str, held) -> None:
    """Take the lock, set ``held``, and keep it until killed."""
    with hostlock.host_lock(path):
        held.set()
        time.sleep(600)


def ask(path: str, out) -> None:
    """Take the lock once and put the seconds waited for it on ``out``."""
    with hostlock.host_lock(path) as waited:
        out.put(waited)
