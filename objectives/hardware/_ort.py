"""ONNX Runtime plumbing shared by the CPU cost models: sessions, feeds, and the kernels a model runs.

``optimized`` asks ONNX Runtime for the graph it really executes on this machine (QDQ pairs fused
into QLinearConv, NCHWc layouts, the transposes between int8 and float regions) and gives every
node a unique name; ``profile`` runs that graph with ONNX Runtime's profiler on and returns each
kernel with its signature (operator, attributes, input/output types and shapes, constant shapes)
and its time in every run. A lookup table is a map from signature digests to those times.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

RUNTIME = "onnxruntime"


def session(model: bytes, *, threads: int, optimize: bool = True, profile_prefix: str | None = None,
            optimized_path: str | None = None):
    """A CPU session at a fixed thread count, sequential executor, quiet logs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def example_batch(example: np.ndarray | None, input_shape: tuple[int, ...], batch_size: int) -> np.ndarray:
    """``batch_size`` samples: the artifact's example inputs (real data, repeated if too few), or,
    where it has none, a seeded standard normal batch.

    Real inputs matter: some int8 kernels are data dependent (a uint8 MaxPool measured 1.7 ms on
    zeros and 4.9 ms on uniform noise on the machine this was built on).
    """
    if example is None or len(example) == 0:
        return np.random.default_rng(0).standard_normal((batch_size, *input_shape[1:]), dtype=np.float32)
    reps = -(-batch_size // len(example))
    dtype = np.int64 if np.issubdtype(np.asarray(example).dtype, np.integer) else np.float32  # token ids stay ids
    return np.ascontiguousarray(np.concatenate([example] * reps)[:batch_size], dtype=dtype)


@dataclass(frozen=True)
class Kernel:
    """One kernel ONNX Runtime runs: what it is (``signature``) and its digest (``key``)."""

    key: str
    op: str
    node: str
    signature: dict[str, Any] = field(repr=False)

    def describe(self) -> str:
        shapes = " ".join("x".join(map(str, s)) or "scalar" for _, s in self.signature["outputs"])
        return f"{self.op} -> {shapes}"


@dataclass
class Profile:
    """Kernels of one model in execution order, their time in each run (ms) and each run's wall time."""

    kernels: list[Kernel]
    times_ms: dict[str, list[float]]  # node name -> one time per profiled run
    wall_ms: list[float]

    def kernel_medians(self) -> dict[str, float]:
        return {k.node: float(np.median(self.times_ms[k.node])) for k in self.kernels if self.times_ms.get(k.node)}

    def overhead_ms(self) -> float:
        """Median wall time of a run minus the median sum of its kernels: the runtime's own cost."""
        sums = np.sum([t for t in self.times_ms.values() if len(t) == len(self.wall_ms)], axis=0)
        return float(np.median(np.asarray(self.wall_ms) - sums))


def optimized(onnx_bytes: bytes, *, threads: int) -> bytes:
    """The graph ONNX Runtime executes for ``onnx_bytes`` on this machine, nodes renamed uniquely."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "optimized.onnx")
        session(onnx_bytes, threads=threads, optimized_path=path)
        model = onnx.load(path)
    for i, node in enumerate(model.graph.node):  # ORT's own nodes may share a name
        node.name = f"k{i:03d}"
    return model.SerializeToString()


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        elif isinstance(value, (list, tuple)):
            value = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in value]
        elif not isinstance(value, (int, float, str)):
            value = type(value).__name__
        out[a.name] = value
    return out


def _type_shapes(entries: list[dict[str, list[int]]]) -> list[list[Any]]:
    return [[t, list(s)] for e in entries for t, s in e.items()]


def signature_key(signature: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:24]


def profile(optimized_bytes: bytes, batch: np.ndarray, *, threads: int, warmup: int, repeats: int) -> Profile:
    """Run an ``optimized`` graph ``warmup + repeats`` times with the profiler on; keep the last ``repeats``."""
    model = onnx.load_from_string(optimized_bytes)
    nodes = {n.name: n for n in model.graph.node}
    constants = {t.name: [int(t.data_type), list(t.dims)] for t in model.graph.initializer}
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(optimized_bytes, threads=threads, optimize=False, profile_prefix=str(Path(tmp) / "p"))
        feed = {sess.get_inputs()[0].name: batch}
        wall = []
        for i in range(warmup + repeats):
            start = time.perf_counter()
            sess.run(None, feed)
            if i >= warmup:
                wall.append((time.perf_counter() - start) * 1e3)
        path = sess.end_profiling()
        with open(path) as f:
            events = json.load(f)
        os.unlink(path)
    times: dict[str, list[float]] = defaultdict(list)
    kernels: dict[str, Kernel] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"].removesuffix("_kernel_time")
        times[name].append(e["dur"] / 1e3)
        if name in kernels:
            continue
        node, args = nodes[name], e["args"]
        sig = {
            "op": args["op_name"], "domain": node.domain, "attrs": _attrs(node),
            "inputs": _type_shapes(args.get("input_type_shape", [])),
            "outputs": _type_shapes(args.get("output_type_shape", [])),
            "constants": [constants[i] for i in node.input if i in constants],
        }
        kernels[name] = Kernel(key=signature_key(sig), op=args["op_name"], node=name, signature=sig)
    kept = {name: t[warmup:] for name, t in times.items()}
    return Profile(kernels=list(kernels.values()), times_ms=kept, wall_ms=wall)


def kernels(onnx_bytes: bytes, batch: np.ndarray, *, threads: int) -> list[Kernel]:
    """The kernels ONNX Runtime runs for ``onnx_bytes`` on this batch, from one profiled run (its time unused)."""
    return profile(optimized(onnx_bytes, threads=threads), batch, threads=threads, warmup=0, repeats=1).kernels


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()



def fingerprint(*, threads: int, batch_size: int) -> dict[str, Any]:
    """What a latency measured here depends on: the CPU, its instruction set, the runtime and its settings."""
    import onnxruntime as ort

    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = sorted(have & {"avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                                           "avx_vnni", "amx_int8", "amx_bf16", "neon", "asimd"})
                    break
    except OSError:
        pass
    return {"cpu": cpu_name(), "isa": flags, "runtime": f"{RUNTIME} {ort.__version__}",
            "threads": threads, "batch_size": batch_size}
