"""The ``executorch`` cost model: an artifact exported to an ExecuTorch program (``model.pte``) on the XNNPACK
delegate, timed in ExecuTorch's runtime on this CPU by the ``cpu`` cost model's protocol.

What XNNPACK runs, per knob (a trial is refused rather than timed as something it is not):

- ``bits`` <= 8 with ``abits`` 8 (the artifact's ``int8_layers``): int8, quantized as ONNX Runtime's export does it
  (PT2E with the XNNPACK quantizer: weights per output channel, symmetric int8 of the decoded values, so 2-7-bit
  codes ride on the int8 grid; inputs and outputs per tensor, min/max calibrated on the artifact's example images).
- ``bits`` <= 8 with ``abits`` 32 (weight-only) and ``kmeans``: float32 on the decoded weights, exact. XNNPACK's
  only int8-weight kernels with float inputs quantize the inputs at run time (dynamic quantization), which the
  trial was not scored with; k-means codebooks have no kernel at all.
- ``sparsity``: dense, zeros stored. ``channels``, ``rank``, ``tucker``: the smaller or factorized layers as they are.
- Refused (``ValueError``, one line): an int8 layer XNNPACK's quantizer has no pattern for (anything but Conv1d,
  Conv2d, Linear), or whose int8 operators the delegate leaves to ExecuTorch's portable kernels.

The program's batch is ``batch_size`` (the timed batch), fixed: ``load`` runs other batches in chunks of it, the
last one padded. A dynamic batch dimension was tried and dropped: with ExecuTorch 1.5.1, programs bounded at 16
(a toy on 16x16 images, a CNN with a 16-channel layer) kept 16 as a static size inside the delegate and failed on any
smaller batch ("Attempted to resize a static tensor"), where the same models bounded at 64 ran every batch size.

XNNPACK's thread pool is process-wide, and resetting it while a program is loaded crashes the process (measured
here: exit 139 on ``_unsafe_reset_threadpool`` after ``load_method``). So the timed runs happen in a worker process
whose pool is set to ``threads`` once, at its start, before any program is loaded; this process's pool (``load``,
which scores accuracy) is never touched.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from . import _ort
from ._base import BaseCostModel, Measurement
from ._hostlock import host_lock, lock_path, neighbours
from ._ort import cpu_name
from .cpu import check_protocol, measure_runs, spawn_worker

__all__ = ["ExecuTorchCostModel", "LoadedProgram", "export_program"]

PTE = "model.pte"
CACHED = 8  # programs kept per cost model: a trial's untrained and trained student, the sweep's deltas
INT8_LAYER_TYPES = ("Conv1d", "Conv2d", "Linear")  # what XNNPACKQuantizer annotates of this engine's layers


def executorch_version() -> str:
    """The installed ExecuTorch's version; a one-line error naming the package and the command otherwise."""
    try:
        import executorch  # noqa: F401
        from importlib.metadata import version

        return version("executorch")
    except ImportError:
        raise ValueError("hardware=executorch needs the package 'executorch', which is not installed: "
                         "run `uv sync --extra runtimes`") from None


class ExecuTorchCostModel(BaseCostModel):
    """Median wall time of one batch of the artifact's ExecuTorch program (XNNPACK delegate), with the ``cpu``
    cost model's protocol: ``settle_s`` idle, ``warmup`` runs, ``repeats`` timed runs in ``rounds`` interleaved
    across the models measured together, re-measured (``retries``) while the interquartile range exceeds
    ``max_rel_spread`` of the median, real example inputs, the host lock held from the pause to the last run.

    The program is the one the artifact carries (``artifact.files["model.pte"]``, a bundle's), else exported anew
    from ``artifact.module`` (cached by the artifact's contents). Timing runs in a worker process whose XNNPACK
    thread pool holds ``threads`` threads (see the module's docstring for why a worker).
    """

    name: ClassVar[str] = "executorch"
    runtime_files: ClassVar[tuple[str, ...]] = (PTE,)

    def __init__(
        self, *, batch_size: int = 64, threads: int = 1, warmup: int = 10, repeats: int = 50, rounds: int = 5,
        max_rel_spread: float = 0.2, retries: int = 2, settle_s: float = 2.0, host_lock: bool | str = True,
    ) -> None:
        check_protocol(batch_size=batch_size, threads=threads, warmup=warmup, repeats=repeats, rounds=rounds,
                       max_rel_spread=max_rel_spread, retries=retries, settle_s=settle_s)
        self.version = executorch_version()
        self.batch_size, self.threads, self.warmup, self.repeats = batch_size, threads, warmup, repeats
        self.rounds = min(rounds, repeats)
        self.max_rel_spread, self.retries, self.settle_s = max_rel_spread, retries, settle_s
        self.host_lock, self.lock_path = host_lock, lock_path(host_lock)
        self._worker = _Worker(threads)
        self._programs: OrderedDict[str, bytes] = OrderedDict()

    def quick(self, *, warmup: int, repeats: int) -> ExecuTorchCostModel:
        quick = ExecuTorchCostModel(batch_size=self.batch_size, threads=self.threads, warmup=warmup, repeats=repeats,
                                    rounds=min(3, repeats), max_rel_spread=self.max_rel_spread, retries=0,
                                    settle_s=0.0, host_lock=self.host_lock)
        quick._worker, quick._programs = self._worker, self._programs  # same threads, same programs
        return quick

    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("batch_size", "threads", "warmup", "repeats", "rounds")}

    def batch(self, artifact: Any) -> np.ndarray:
        return _ort.example_batch(getattr(artifact, "example", None), artifact.input_shape, self.batch_size)

    def export(self, artifact: Any) -> dict[str, bytes]:
        return {PTE: self.program(artifact)}

    def load(self, files: dict[str, bytes]) -> LoadedProgram:
        return LoadedProgram(files[PTE])

    def program(self, artifact: Any) -> bytes:
        """The artifact's .pte: the one it carries, else exported (and kept among the last ``CACHED``)."""
        files = getattr(artifact, "files", None)
        if files and PTE in files:
            return files[PTE]
        key = _digest(artifact)
        if key not in self._programs:
            module = getattr(artifact, "module", None)
            if module is None:
                raise ValueError("hardware=executorch exports the artifact's PyTorch module, and this one has none")
            self._programs[key] = export_program(module, getattr(artifact, "example", None), artifact.input_shape,
                                                 artifact.int8_layers, batch_size=self.batch_size)
            while len(self._programs) > CACHED:
                self._programs.popitem(last=False)
        self._programs.move_to_end(key)
        return self._programs[key]

    def latency_ms(self, artifact: Any) -> Measurement:
        return self.measure_many([artifact])[0]

    def measure_many(self, artifacts: Sequence[Any]) -> list[Measurement]:
        self._worker.start()  # its imports overlap the exports
        jobs = [(self.program(a), self.batch(a)) for a in artifacts]  # exported before the lock: no timing yet
        with host_lock(self.lock_path) as waited:
            self._worker.ready()
            time.sleep(self.settle_s)
            got = self._worker.run(_measure, self.settings(), jobs, self.max_rel_spread, self.retries)
        return [dataclasses.replace(m, waited_s=waited) for m in got]

    def describe(self) -> dict[str, Any]:
        return {
            "cost_model": self.name, "device": cpu_name(), **self.settings(),
            "runtime": f"executorch {self.version} (XNNPACK)", "settle_s": self.settle_s, "cpu_count": os.cpu_count(),
            "predicted": False, "neighbours": neighbours(self.lock_path),
            "note": "int8 layers as PT2E int8 (per-channel symmetric weights), float32 elsewhere; timed in a worker "
                    "process whose XNNPACK thread pool holds `threads` threads",
        }

    def close(self) -> None:
        self._worker.close()


class _Worker:
    """The process that times programs, started on first use; its XNNPACK thread pool set to ``threads`` at start."""

    def __init__(self, threads: int) -> None:
        self.threads, self.pool, self.started = threads, None, None

    def start(self) -> None:
        """Start the process without waiting for it (``ready`` waits)."""
        if self.pool is None:
            self.pool, self.started = spawn_worker(_set_threads, (self.threads,))

    def ready(self) -> None:
        self.start()
        self.started.result()

    def run(self, fn, *args) -> Any:
        self.ready()
        return self.pool.submit(fn, *args).result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool, self.started = None, None

    def __getstate__(self) -> dict[str, Any]:
        return {"threads": self.threads, "pool": None, "started": None}


def _set_threads(threads: int) -> None:
    """In a fresh worker, before any program is loaded: the only safe moment to size XNNPACK's pool."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)


def _measure(settings: dict[str, Any], jobs: list[tuple[bytes, np.ndarray]], max_rel_spread: float,
             retries: int) -> list[Measurement]:
    """In the worker: load each program, then time them all by the shared protocol."""
    import torch

    runs = []
    for pte, batch in jobs:
        program, x = LoadedProgram(pte), torch.from_numpy(batch)
        runs.append(lambda program=program, x=x: program.run(x))
    return measure_runs(runs, settings, max_rel_spread, retries)


class LoadedProgram:
    """A .pte loaded in this process's ExecuTorch runtime; called on a float32 NCHW batch (numpy) of any size, it
    returns the logits (numpy), run in chunks of the program's batch size."""

    def __init__(self, pte: bytes) -> None:
        from executorch.runtime import Runtime

        self._program = Runtime.get().load_program(pte)  # a method does not keep its program alive: this does
        self._method = self._program.load_method("forward")
        self.batch_size = int(self._method.metadata.input_tensor_meta(0).sizes()[0])

    def run(self, x: Any) -> Any:
        return self._method.execute([x])[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        out = []
        for chunk in _chunks(np.asarray(batch, dtype=np.float32), self.batch_size, pad=True):
            out.append(self.run(torch.from_numpy(chunk)).numpy().copy())  # the output's memory is the program's
        return np.concatenate(out)[: len(batch)]


def _chunks(batch: np.ndarray, size: int, *, pad: bool = False) -> list[np.ndarray]:
    """``batch`` in contiguous pieces of ``size`` samples (the last one zero-padded to ``size`` where ``pad``)."""
    pieces = [np.ascontiguousarray(batch[i : i + size]) for i in range(0, len(batch), size)]
    if pad and pieces and len(pieces[-1]) < size:
        pieces[-1] = np.concatenate([pieces[-1], np.zeros((size - len(pieces[-1]), *batch.shape[1:]), batch.dtype)])
    return pieces


def _digest(artifact: Any) -> str:
    """What the exported program depends on: the model (its ONNX form), the int8 layers and the calibration images."""
    h = hashlib.sha256(artifact.onnx)
    h.update(repr(tuple(artifact.int8_layers)).encode())
    example = getattr(artifact, "example", None)
    if example is not None and artifact.int8_layers:
        h.update(np.ascontiguousarray(example, dtype=np.float32).tobytes())
    return h.hexdigest()


def export_program(module: Any, example: np.ndarray | None, input_shape: Sequence[int], int8_layers: Sequence[str],
                   *, batch_size: int) -> bytes:
    """``module`` as an ExecuTorch program lowered to XNNPACK for batches of ``batch_size``: ``int8_layers`` int8
    (PT2E, calibrated on ``example``), the rest float32."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    _check_int8_types(module, int8_layers)
    calibration = _ort.example_batch(example, tuple(input_shape), batch_size) if example is None else \
        np.asarray(example, dtype=np.float32)
    x = torch.from_numpy(_ort.example_batch(calibration, tuple(input_shape), batch_size))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(module.eval(), (x,))
        if int8_layers:
            quantized = _quantized(program.module(), tuple(int8_layers), calibration, batch_size)
            program = torch.export.export(quantized, (x,))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    outside = sorted({str(n.target) for n in lowered.exported_program().graph.nodes
                      if n.op == "call_function" and "quantize" in str(n.target)})
    if outside:
        raise ValueError(f"hardware=executorch: the int8 layers {list(int8_layers)} leave int8 operators outside the "
                         f"XNNPACK delegate ({', '.join(outside)}): ExecuTorch would not run them as int8 kernels")
    return lowered.buffer


def _check_int8_types(module: Any, layers: Sequence[str]) -> None:
    """A ValueError naming the first of ``layers`` that is not a layer XNNPACK's quantizer makes int8."""
    modules = dict(module.named_modules())
    for name in layers:
        kind = type(modules.get(name)).__name__
        if kind not in INT8_LAYER_TYPES:
            raise ValueError(f"hardware=executorch: layer {name!r} ({kind}) runs int8 in this configuration "
                             f"(bits <= 8 with abits 8), and XNNPACK's int8 kernels take only {list(INT8_LAYER_TYPES)}")


def _quantized(graph_module: Any, layers: tuple[str, ...], calibration: np.ndarray, batch_size: int) -> Any:
    """PT2E int8 on ``layers`` only (the XNNPACK quantizer, min/max calibrated like ONNX Runtime's), converted; a
    ValueError naming the first layer that XNNPACK cannot run int8."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(graph_module, _quantizer(set(layers)))
    whole = -(-len(calibration) // batch_size) * batch_size  # the graph takes whole batches: wrap around to fill the
    for chunk in _chunks(calibration[np.arange(whole) % len(calibration)], batch_size):  # last (min/max unchanged)
        prepared(torch.from_numpy(chunk))
    converted = convert_pt2e(prepared)
    missing = set(layers) - _int8_owners(converted)
    if missing:
        raise ValueError(f"hardware=executorch: layers {sorted(missing)} run int8 in this configuration, and "
                         "XNNPACK's quantizer found no int8 pattern for them")
    return converted


def _owner(node: Any) -> str | None:
    """The fqn of the innermost module a graph node was traced in."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else None


def _quantizer(layers: set[str]) -> Any:
    """The XNNPACK quantizer, per-channel symmetric weights, min/max activation ranges (ONNX Runtime's default
    calibration; XNNPACK's default histogram observer would pick other ranges than the ONNX model's), restricted
    to ``layers`` and a ReLU right after one of them (fused into its int8 output, as ONNX Runtime fuses it)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import MinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=True)
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    config = dataclasses.replace(config, input_activation=act, output_activation=act)
    relu = (torch.ops.aten.relu.default, torch.ops.aten.relu_.default)

    def chosen(node: Any) -> bool:
        if node.op != "call_function":
            return True  # weights and biases: they belong to the operator that uses them
        if _owner(node) in layers:
            return True
        return node.target in relu and isinstance(node.args[0], torch.fx.Node) and _owner(node.args[0]) in layers

    return XNNPACKQuantizer().set_global(config).set_filter_function(chosen)


def _int8_owners(graph_module: Any) -> set[str]:
    """The layers whose convolution or matrix product takes a dequantized (int8) weight."""
    out = set()
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and len(node.args) > 1 and hasattr(node.args[1], "target") \
                and "dequantize_per_channel" in str(node.args[1].target):
            out.add(_owner(node))
    return out
