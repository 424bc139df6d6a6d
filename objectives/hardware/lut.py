"""A latency lookup table for a named device: kernel latencies measured once, summed during a search.

The table maps each kernel ONNX Runtime runs (operator, attributes, types and shapes: see
``_ort.profile``) to its median time measured inside whole models on the device, plus one calibrated
constant (the runtime's own cost per run, from whole-model measurements). A trial's latency is the
sum of its kernels' entries plus that constant. ``python -m search.hardware build`` fills a table;
``python -m search.hardware validate`` states how good it is.

A kernel the table has not seen is measured on demand and added when this machine is the table's
device; on any other machine it is refused with a message, since a time measured here says nothing
about the device the table describes.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import _ort
from ._base import BaseCostModel, Measurement
from ._hostlock import host_lock, lock_path, neighbours

FORMAT = "compress-search latency table v1"
KEEP = 15  # times kept per entry (the entry is their median)


def device_slug(cpu: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") or "unknown-cpu"


def table_path(root: str | Path, device: str, *, batch_size: int, threads: int) -> Path:
    return Path(root) / device / f"lut-b{batch_size}-t{threads}.json"


class LatencyTable:
    """Kernel entries (``key -> {"ms", "times", "what"}``), the constant, and the device's fingerprint."""

    def __init__(self, fingerprint: dict[str, Any], entries: dict[str, dict[str, Any]] | None = None,
                 constant_ms: float = 0.0, meta: dict[str, Any] | None = None) -> None:
        self.fingerprint, self.entries = fingerprint, dict(entries or {})
        self.constant_ms, self.meta = float(constant_ms), dict(meta or {})

    @property
    def device(self) -> str:
        return device_slug(self.fingerprint["cpu"])

    def add(self, profile: _ort.Profile) -> int:
        """Record the kernel times of one profiled model; returns how many kernels were new."""
        new = 0
        for kernel, ms in zip(profile.kernels, (profile.kernel_medians()[k.node] for k in profile.kernels)):
            entry = self.entries.get(kernel.key)
            if entry is None:
                entry = self.entries[kernel.key] = {"what": kernel.describe(), "times": []}
                new += 1
            entry["times"] = (entry["times"] + [round(ms, 5)])[-KEEP:]
            entry["ms"] = float(np.median(entry["times"]))
        return new

    def missing(self, kernels: list[_ort.Kernel]) -> list[_ort.Kernel]:
        return [k for k in kernels if k.key not in self.entries]

    def kernel_sum(self, kernels: list[_ort.Kernel]) -> float:
        return float(sum(self.entries[k.key]["ms"] for k in kernels))

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "fingerprint": self.fingerprint, "constant_ms": self.constant_ms,
                           "meta": self.meta, "entries": self.entries}, indent=0, sort_keys=True)

    def save(self, path: str | Path) -> None:
        """Write atomically (a temporary file renamed over the old one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"hardware.table: cannot read the latency table {path} ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"hardware.table: {path} is not a latency table ({FORMAT!r} expected)")
        return cls(data["fingerprint"], data["entries"], data["constant_ms"], data.get("meta"))


class LutCostModel(BaseCostModel):
    """Latency = the sum of the table's entries for the kernels of the artifact + a calibrated constant.

    ``table`` is the folder of tables (``<table>/<device>/lut-b<batch>-t<threads>.json``); ``device``
    names the folder to use, by default this machine's. The kernels of an artifact are found by
    ONNX Runtime's optimizer and one profiled run (its time is not used), a few tens of ms.

    A lookup takes no lock; measuring a missing kernel does: ``host_lock`` (as for ``cpu``: True the default
    lock file, a string that file, False none) is held around its profiled runs, so it never times beside
    another worker's measurement, and ``reference()`` measures with the same setting.
    """

    name: ClassVar[str] = "lut"
    measures: ClassVar[bool] = False

    def __init__(self, *, table: str = "results/costmodels", device: str | None = None, batch_size: int = 64,
                 threads: int = 1, measure_missing: bool = True, warmup: int = 3, repeats: int = 10,
                 host_lock: bool | str = True) -> None:
        for key, value in (("batch_size", batch_size), ("threads", threads), ("repeats", repeats)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"hardware.{key} must be a positive integer, got {value!r}")
        self.batch_size, self.threads, self.warmup, self.repeats = batch_size, threads, warmup, repeats
        self.measure_missing = measure_missing
        self.host_lock, self.lock_path = host_lock, lock_path(host_lock)
        self.here = _ort.fingerprint(threads=threads, batch_size=batch_size)
        self.device = device or device_slug(self.here["cpu"])
        self.path = table_path(table, self.device, batch_size=batch_size, threads=threads)
        if not self.path.is_file():
            raise ValueError(
                f"hardware.device: no latency table for device {self.device!r} at {self.path} "
                f"(batch {batch_size}, {threads} thread(s)); build it there with `python -m search.hardware build`"
            )
        self.table = LatencyTable.load(self.path)
        settings = {k: self.table.fingerprint.get(k) for k in ("threads", "batch_size")}
        if settings != {"threads": threads, "batch_size": batch_size}:
            raise ValueError(f"hardware: {self.path} was built with {settings}, not threads={threads}, "
                             f"batch_size={batch_size}")

    @property
    def same_device(self) -> bool:
        return self.table.fingerprint == self.here

    def kernels(self, artifact: Any) -> list[_ort.Kernel]:
        batch = _ort.example_batch(getattr(artifact, "example", None), artifact.input_shape, self.batch_size)
        return _ort.kernels(artifact.onnx, batch, threads=self.threads)

    def latency_ms(self, artifact: Any) -> Measurement:
        kernels = self.kernels(artifact)
        missing = self.table.missing(kernels)
        waited = self.fill(artifact, missing) if missing else None
        total = self.table.kernel_sum(kernels)
        # the constant is the runtime's own cost per run; on a table calibrated under load it can come out
        # negative, and a prediction below the kernels' own time (or below zero) would be meaningless
        value = total + self.table.constant_ms if total + self.table.constant_ms > 0 else total
        return Measurement(value, float(self.table.meta.get("residual_iqr_ms", 0.0)), waited_s=waited)

    def fill(self, artifact: Any, missing: list[_ort.Kernel]) -> float | None:
        """Measure the artifact's kernels here and add the missing ones (only on the table's device); returns the
        seconds waited for the host lock (None: no lock)."""
        example = ", ".join(k.describe() for k in missing[:3])
        if not self.measure_missing or not self.same_device:
            why = ("hardware.measure_missing is false" if self.same_device else
                   f"this machine ({self.here['cpu']}, {self.here['runtime']}) is not the table's device "
                   f"({self.table.fingerprint['cpu']}, {self.table.fingerprint['runtime']})")
            raise LookupError(
                f"latency table {self.path} has no entry for {len(missing)} kernel(s) of this model ({example}) "
                f"and {why}; extend the table on its device with `python -m search.hardware build`"
            )
        batch = _ort.example_batch(getattr(artifact, "example", None), artifact.input_shape, self.batch_size)
        with host_lock(self.lock_path) as waited:
            profile = _ort.profile(_ort.optimized(artifact.onnx, threads=self.threads), batch, threads=self.threads,
                                   warmup=self.warmup, repeats=self.repeats)
        self.table.add(profile)
        self.table.meta["filled_on_demand"] = int(self.table.meta.get("filled_on_demand", 0)) + len(missing)
        self.table.save(self.path)
        return waited

    def reference(self) -> BaseCostModel:
        from .cpu import OrtCpuCostModel

        return OrtCpuCostModel(batch_size=self.batch_size, threads=self.threads, host_lock=self.host_lock)

    def describe(self) -> dict[str, Any]:
        fp = self.table.fingerprint
        return {
            "cost_model": self.name, "device": fp["cpu"], "table": str(self.path), "entries": len(self.table.entries),
            "constant_ms": round(self.table.constant_ms, 4), "runtime": fp["runtime"], "threads": self.threads,
            "batch_size": self.batch_size, "built": self.table.meta.get("built"),
            "same_device": self.same_device, "predicted": True, "neighbours": neighbours(self.lock_path),
        }


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
