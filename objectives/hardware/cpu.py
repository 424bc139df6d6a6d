"""The ``cpu`` cost model: an artifact timed on this CPU, in ONNX Runtime (default) or PyTorch."""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, ClassVar

import numpy as np

from . import _ort
from ._base import BaseCostModel, Measurement
from ._hostlock import host_lock, lock_path, neighbours
from ._ort import cpu_name

RUNTIMES = ("onnxruntime", "torch")


def summarize(times: Sequence[float]) -> Measurement:
    """Median and interquartile range of per-run times (ms)."""
    q1, median, q3 = np.percentile(np.asarray(times, dtype=float), [25, 50, 75])
    return Measurement(float(median), float(q3 - q1), tuple(float(t) for t in times))


def check_protocol(*, batch_size: int, threads: int, warmup: int, repeats: int, rounds: int, max_rel_spread: float,
                   retries: int, settle_s: float) -> None:
    """The timing protocol's settings (shared by the measuring cost models): a ValueError naming the bad one."""
    for key, value in (("batch_size", batch_size), ("threads", threads), ("repeats", repeats), ("rounds", rounds)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"hardware.{key} must be a positive integer, got {value!r}")
    if warmup < 0 or retries < 0 or max_rel_spread <= 0 or settle_s < 0:
        raise ValueError(
            "hardware: need warmup >= 0, retries >= 0, max_rel_spread > 0, settle_s >= 0, got "
            f"{warmup=}, {retries=}, {max_rel_spread=}, {settle_s=}"
        )


def spawn_worker(initializer: Any = None, initargs: tuple = ()) -> tuple[ProcessPoolExecutor, Future]:
    """A one-process pool (spawned, so nothing of this process's state is inherited) and the future of its start:
    a first start imports torch, which should be waited for before a settle pause, not during the timing."""
    import multiprocessing

    worker = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=initializer,
                                 initargs=initargs)
    return worker, worker.submit(_ready)


class OrtCpuCostModel(BaseCostModel):
    """Median wall time of one batch, after warm-up, at a fixed thread count, with the spread recorded.

    Protocol: the machine is left idle ``settle_s`` seconds; each model gets ``warmup`` runs, then
    ``repeats`` timed runs split into ``rounds`` that are interleaved across the models measured
    together (``measure_many``), so a slow spell of the machine hits them all alike. The value is the
    median, the spread the interquartile range; when the spread exceeds ``max_rel_spread`` of the
    median the measurement is taken again (up to ``retries`` times) and the tightest one kept.
    Inputs are the artifact's real example samples where it has them.

    ``isolate=True`` measures in a separate worker process, so the search's own threads and memory
    do not share the interpreter with the timed runs. ``runtime="torch"`` times the plain PyTorch
    module instead of the ONNX model.

    ``host_lock`` keeps the workers of one host from timing at the same moment: the settle pause and the
    timed runs hold an exclusive lock on a file every process shares (True: the default file in the
    temporary folder; a string: that file; False: none), and each measurement records how long it waited
    (``Measurement.waited_s``). With ``isolate=True`` the calling process holds it around the worker's run.

    Why these defaults, measured on the 2-vCPU VM this was built on: at 2 threads the same model
    read 2.0 ms in one measurement and 3.6-5.2 ms in the next (spread up to 2.6x over six repeats);
    at 1 thread the six readings stayed within 16%. And right after a recovery fine-tune one model
    read 2.0 ms where a 2 s pause gave 1.33 ms, hence ``settle_s``.
    """

    name: ClassVar[str] = "cpu"
    #: the ``runtime`` values this class times on (a subclass for another runtime names its own)
    runtimes: ClassVar[tuple[str, ...]] = RUNTIMES

    def __init__(
        self, *, batch_size: int = 64, threads: int = 1, warmup: int = 10, repeats: int = 50, rounds: int = 5,
        max_rel_spread: float = 0.2, retries: int = 2, settle_s: float = 2.0, isolate: bool = False,
        runtime: str = "onnxruntime", host_lock: bool | str = True,
    ) -> None:
        check_protocol(batch_size=batch_size, threads=threads, warmup=warmup, repeats=repeats, rounds=rounds,
                       max_rel_spread=max_rel_spread, retries=retries, settle_s=settle_s)
        if runtime not in self.runtimes:
            raise ValueError(f"hardware.runtime must be one of {list(self.runtimes)}, got {runtime!r}")
        self.batch_size, self.threads, self.warmup, self.repeats = batch_size, threads, warmup, repeats
        self.rounds = min(rounds, repeats)
        self.max_rel_spread, self.retries, self.settle_s = max_rel_spread, retries, settle_s
        self.isolate, self.runtime = bool(isolate), runtime
        self.host_lock, self.lock_path = host_lock, lock_path(host_lock)
        self._worker: ProcessPoolExecutor | None = None

    def quick(self, *, warmup: int, repeats: int) -> OrtCpuCostModel:
        """A copy (of a subclass too, with its own settings) with the short protocol, in this process."""
        quick = copy.copy(self)
        quick.warmup, quick.repeats, quick.rounds = warmup, repeats, min(3, repeats)
        quick.retries, quick.settle_s, quick.isolate, quick._worker = 0, 0.0, False, None
        return quick

    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("batch_size", "threads", "warmup", "repeats", "rounds", "runtime")}

    @property
    def times_onnx(self) -> bool:
        """Whether it times an artifact's ONNX model (not its PyTorch module): pick's verification may then time a
        bundle together with the ONNX models the search stored (``search.pick.verify.latency``)."""
        return self.runtime != "torch"

    def session(self, onnx_bytes: bytes):
        return _ort.session(onnx_bytes, threads=self.threads)

    def batch(self, artifact: Any) -> np.ndarray:
        return _ort.example_batch(getattr(artifact, "example", None), artifact.input_shape, self.batch_size)

    def latency_ms(self, artifact: Any) -> Measurement:
        return self.measure_many([artifact])[0]

    def measure_many(self, artifacts: Sequence[Any]) -> list[Measurement]:
        """Each artifact's latency, the timed runs interleaved across all of them in ``rounds``, the host lock
        held from the settle pause to the last timed run."""
        jobs = [(self._payload(a), self.batch(a)) for a in artifacts]
        with host_lock(self.lock_path) as waited:
            if self.isolate:
                worker = self._started_worker()  # a first start imports torch: before the pause, not after
                time.sleep(self.settle_s)
                got = worker.submit(_measure, self, jobs).result()
            else:
                time.sleep(self.settle_s)
                got = _measure(self, jobs)
        return [dataclasses.replace(m, waited_s=waited) for m in got]

    def _started_worker(self) -> ProcessPoolExecutor:
        if self._worker is None:
            self._worker, started = spawn_worker()
            started.result()
        return self._worker

    def _payload(self, artifact: Any) -> Any:
        if self.runtime == "onnxruntime":
            return artifact.onnx
        module = getattr(artifact, "module", None)
        if module is None:
            raise ValueError("hardware.runtime=torch needs the artifact's PyTorch module, and this one has none")
        return module

    def runner(self, payload: Any, batch: np.ndarray) -> Callable[[], Any]:
        """A zero-argument callable running one batch of ``payload`` (``_payload``'s) on the configured runtime;
        a subclass for another runtime overrides this, ``_payload`` and ``describe``, and keeps the protocol."""
        if self.runtime == "onnxruntime":
            sess = _ort.session(payload, threads=self.threads)
            feed = {sess.get_inputs()[0].name: batch}
            return lambda: sess.run(None, feed)
        import torch

        module, x = payload.eval(), torch.from_numpy(batch)

        def run():
            with torch.inference_mode():
                module(x)

        return run

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        runtime = f"onnxruntime {ort.__version__}" if self.runtime == "onnxruntime" else _torch_version()
        return {
            "cost_model": self.name, "device": cpu_name(), **self.settings(), "runtime": runtime,
            "provider": "CPUExecutionProvider" if self.runtime == "onnxruntime" else "eager",
            "settle_s": self.settle_s, "isolate": self.isolate, "cpu_count": os.cpu_count(), "predicted": False,
            "neighbours": neighbours(self.lock_path),
        }

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()
            self._worker = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_worker": None}


def _ready() -> None:
    """A no-op run in a fresh worker: unpickling it imports this package there."""


def _torch_version() -> str:
    import torch

    return f"torch {torch.__version__}"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch's (process-wide) thread count set to ``n`` for the duration, then restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timed(runs, settings: dict[str, Any]) -> list[list[float]]:
    for run in runs:
        for _ in range(settings["warmup"]):
            run()
    per_round = [len(r) for r in np.array_split(np.arange(settings["repeats"]), settings["rounds"])]
    times: list[list[float]] = [[] for _ in runs]
    for n in per_round:
        for i, run in enumerate(runs):
            for _ in range(n):
                start = time.perf_counter()
                run()
                times[i].append((time.perf_counter() - start) * 1e3)
    return times


def _measure(cost: OrtCpuCostModel, jobs: list[tuple[Any, np.ndarray]]) -> list[Measurement]:
    """Run in this process or in the worker (``cost`` pickled there, without its worker): measure, re-measure the
    too-noisy ones, keep the tightest. PyTorch's thread count is process-wide: it is set for the timing only, then
    restored."""
    if cost.runtime != "torch":
        return _measure_runs(cost, jobs)
    with torch_threads(cost.threads):
        return _measure_runs(cost, jobs)


def _measure_runs(cost: OrtCpuCostModel, jobs: list[tuple[Any, np.ndarray]]) -> list[Measurement]:
    return measure_runs([cost.runner(payload, batch) for payload, batch in jobs], cost.settings(),
                        cost.max_rel_spread, cost.retries)


def measure_runs(runs: Sequence[Any], settings: dict[str, Any], max_rel_spread: float,
                 retries: int) -> list[Measurement]:
    """Each zero-argument ``run`` timed by the protocol of ``settings`` (``warmup``, ``repeats`` in ``rounds``,
    interleaved); the ones whose spread exceeds ``max_rel_spread`` of their median timed again up to ``retries``
    times, the tightest reading kept."""
    best = [summarize(t) for t in _timed(runs, settings)]
    for _ in range(retries):
        noisy = [i for i, m in enumerate(best) if m.spread_ms > max_rel_spread * m.value_ms]
        if not noisy:
            break
        again = _timed([runs[i] for i in noisy], settings)
        for i, t in zip(noisy, again):
            m = summarize(t)
            best[i] = min(best[i], m, key=lambda x: x.spread_ms / x.value_ms)
    return best
