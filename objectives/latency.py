"""Latency: an artifact's ONNX model timed in ONNX Runtime on this CPU."""
from __future__ import annotations

import os
import platform
import time
from typing import Any, ClassVar

import numpy as np

from ._base import BaseCostModel, BaseObjective, Measurement


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class OrtCpuCostModel(BaseCostModel):
    """Median wall time of ``session.run`` on one batch, after warm-up, at a fixed thread count.

    Repeats are timed one by one; the spread is the interquartile range. When the spread exceeds
    ``max_rel_spread`` of the median (a noisy neighbour), the measurement is taken again, up to
    ``retries`` times, and the tightest one is kept.

    Before timing, the machine is left idle for ``settle_s`` seconds: on the 2-core VMs this was
    built on, one ONNX model measured 2.0 ms right after a recovery fine-tune and 1.33 ms after a
    2 s pause, so without it a search records its own load rather than the model's latency.
    """

    name: ClassVar[str] = "cpu"

    def __init__(
        self, *, batch_size: int = 64, threads: int = 2, warmup: int = 10, repeats: int = 50,
        max_rel_spread: float = 0.2, retries: int = 2, settle_s: float = 2.0,
    ) -> None:
        for key, value in (("batch_size", batch_size), ("threads", threads), ("repeats", repeats)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"hardware.{key} must be a positive integer, got {value!r}")
        if warmup < 0 or retries < 0 or max_rel_spread <= 0 or settle_s < 0:
            raise ValueError(
                "hardware: need warmup >= 0, retries >= 0, max_rel_spread > 0, settle_s >= 0, got "
                f"{warmup=}, {retries=}, {max_rel_spread=}, {settle_s=}"
            )
        self.batch_size, self.threads, self.warmup, self.repeats = batch_size, threads, warmup, repeats
        self.max_rel_spread, self.retries, self.settle_s = max_rel_spread, retries, settle_s

    def session(self, onnx_bytes: bytes):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])

    def _once(self, session, feed: dict[str, np.ndarray]) -> Measurement:
        for _ in range(self.warmup):
            session.run(None, feed)
        times = np.empty(self.repeats)
        for i in range(self.repeats):
            start = time.perf_counter()
            session.run(None, feed)
            times[i] = (time.perf_counter() - start) * 1e3
        q1, median, q3 = np.percentile(times, [25, 50, 75])
        return Measurement(float(median), float(q3 - q1), tuple(float(t) for t in times))

    def latency_ms(self, artifact: Any) -> Measurement:
        session = self.session(artifact.onnx)
        shape = (self.batch_size, *artifact.input_shape[1:])
        feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
        time.sleep(self.settle_s)
        best = self._once(session, feed)
        for _ in range(self.retries):
            if best.spread_ms <= self.max_rel_spread * best.value_ms:
                break
            again = self._once(session, feed)
            best = min(best, again, key=lambda m: m.spread_ms / m.value_ms)
        return best

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "cost_model": self.name, "device": cpu_name(), "runtime": f"onnxruntime {ort.__version__}",
            "provider": "CPUExecutionProvider", "threads": self.threads, "batch_size": self.batch_size,
            "warmup": self.warmup, "repeats": self.repeats, "settle_s": self.settle_s, "cpu_count": os.cpu_count(),
        }


class Latency(BaseObjective):
    """Milliseconds per batch from a cost model (minimise)."""

    name: ClassVar[str] = "latency_ms"
    direction = "minimize"
    unit = "ms"

    def __init__(self, *, cost_model: BaseCostModel) -> None:
        self.cost_model = cost_model

    def __call__(self, artifact: Any) -> float:
        return self.cost_model.latency_ms(artifact).value_ms
