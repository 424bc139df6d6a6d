"""The ``openvino`` cost model: an artifact timed in OpenVINO on this CPU, under the ``cpu`` cost model's protocol.

OpenVINO reads the artifact's ONNX model as it is (its int8 QDQ pairs become OpenVINO's FakeQuantize and int8
kernels), or the IR a bundle ships (``model.xml`` with its weights in ``model.bin``: ``export``). Only the runner
differs from ``OrtCpuCostModel``: warm-up, interleaved rounds, spread, retries, settle pause and host lock are its.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ._ort import cpu_name
from .cpu import OrtCpuCostModel

__all__ = ["OpenVinoCostModel"]

XML, BIN = "model.xml", "model.bin"
PRECISIONS = ("f32", "bf16")
INSTALL = "uv sync --extra runtimes"


def _openvino():
    """The ``openvino`` module; a one-line ValueError naming the package and the command where it is missing."""
    try:
        import openvino
    except ImportError as exc:
        raise ValueError(f"hardware=openvino needs the Python package openvino, which is not installed here "
                         f"({exc}); install it with `{INSTALL}` (or `make test`), or use hardware=cpu") from None
    return openvino


def version() -> str:
    """OpenVINO's release (``2026.4.1``), without the build suffix ``get_version()`` carries."""
    return _openvino().get_version().split("-")[0]


class OpenVinoCostModel(OrtCpuCostModel):
    """Median wall time of one batch in OpenVINO's CPU plugin (``OrtCpuCostModel``'s protocol and settings).

    Compiled for latency: ``threads`` as INFERENCE_NUM_THREADS, one stream, the LATENCY hint, and the batch's
    static shape (the IR itself keeps a dynamic batch). ``precision`` is INFERENCE_PRECISION_HINT: f32 by default
    because OpenVINO's own default on a CPU with AVX512-BF16 (this VM's) is bf16, which changes the logits (the
    accuracy the search recorded is float's). Timed on ``artifact.files`` (``export``'s IR) where the artifact
    carries them, else on the ONNX model read in memory.
    """

    name: ClassVar[str] = "openvino"
    runtimes: ClassVar[tuple[str, ...]] = ("openvino",)
    runtime_files: ClassVar[tuple[str, ...]] = (XML, BIN)

    def __init__(
        self, *, batch_size: int = 64, threads: int = 1, warmup: int = 10, repeats: int = 50, rounds: int = 5,
        max_rel_spread: float = 0.2, retries: int = 2, settle_s: float = 2.0, isolate: bool = False,
        precision: str = "f32", host_lock: bool | str = True,
    ) -> None:
        super().__init__(batch_size=batch_size, threads=threads, warmup=warmup, repeats=repeats, rounds=rounds,
                         max_rel_spread=max_rel_spread, retries=retries, settle_s=settle_s, isolate=isolate,
                         runtime="openvino", host_lock=host_lock)
        if precision not in PRECISIONS:
            raise ValueError(f"hardware.precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        _openvino()

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "precision": self.precision}

    def config(self) -> dict[str, Any]:
        """The compile properties: one stream of ``threads`` threads, for latency, at ``precision``."""
        return {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": self.precision}

    def _payload(self, artifact: Any) -> Any:
        files = getattr(artifact, "files", None)
        return dict(files) if files else artifact.onnx

    def read(self, payload: bytes | dict[str, bytes]):
        """An ``openvino.Model`` from ONNX bytes or from ``export``'s files."""
        core = _openvino().Core()
        if isinstance(payload, dict):
            missing = [n for n in self.runtime_files if n not in payload]
            if missing:
                raise ValueError(f"hardware=openvino: the IR lacks {missing}")
            return core.read_model(model=payload[XML], weights=payload[BIN])
        return core.read_model(model=payload)

    def compiled(self, model):
        return _openvino().Core().compile_model(model, "CPU", self.config())

    def runner(self, payload: Any, batch: np.ndarray) -> Callable[[], Any]:
        model = self.read(payload)
        model.reshape({model.input(0): list(batch.shape)})
        request = self.compiled(model).create_infer_request()
        return lambda: request.infer(batch, share_inputs=True)

    def export(self, artifact: Any) -> dict[str, bytes]:
        """The IR of the artifact's ONNX model: ``model.xml`` and ``model.bin``, weights kept as they are (no
        compression to fp16)."""
        ov = _openvino()
        with tempfile.TemporaryDirectory() as tmp:
            ov.save_model(self.read(artifact.onnx), str(Path(tmp) / XML), compress_to_fp16=False)
            return {name: (Path(tmp) / name).read_bytes() for name in self.runtime_files}

    def load(self, files: dict[str, bytes]) -> Callable[[np.ndarray], np.ndarray]:
        """A batch (float32, NCHW, any size) -> logits callable on the IR, compiled as it is timed."""
        compiled = self.compiled(self.read(files))
        request, output = compiled.create_infer_request(), compiled.output(0)

        def run(batch: np.ndarray) -> np.ndarray:
            return request.infer(np.ascontiguousarray(batch, dtype=np.float32))[output].copy()

        return run

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(), "runtime": f"openvino {version()}", "device": cpu_name(),
            "provider": "CPU", "properties": self.config(), "shape": "static batch of batch_size",
        }
