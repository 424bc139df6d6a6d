"""Latency on a CUDA GPU: the artifact's plain PyTorch module timed with CUDA events."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from . import _ort
from ._base import BaseCostModel, Measurement
from ._hostlock import host_lock, lock_path, neighbours

DTYPES = ("float32", "float16", "bfloat16")


def cuda_available() -> tuple[bool, str]:
    """(whether a CUDA device can run here, why not)."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        return False, f"torch cannot be imported ({exc})"
    if not torch.cuda.is_available():
        built = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        return False, f"no CUDA device is visible (torch.cuda.is_available() is False; {built})"
    return True, ""


class CudaCostModel(BaseCostModel):
    """Median time of one batch on the GPU between two CUDA events, after warm-up and synchronisation.

    The module is the trial's plain model: removed channels and factorized layers are really gone,
    so the GPU runs the smaller convolutions. It runs in ``dtype`` (float32, float16 or bfloat16);
    quantized weights run dequantized in that dtype (PyTorch has no int8 convolution on CUDA), and
    ``describe()`` says so. Each of ``repeats`` timings is one forward pass bracketed by events on
    the current stream; ``torch.backends.cudnn.benchmark`` is on, so warm-up also picks algorithms.

    ``host_lock`` (as for ``cpu``: True the default lock file, a string that file, False none) keeps the
    workers of one host from timing on the GPU at the same moment; the warm-up and the timed runs hold it.
    The default file is the one the ``cpu`` cost model uses: one model timed at a time per host, whatever
    the device. Workers on different GPUs of one host that should time side by side each name their own file.
    """

    name: ClassVar[str] = "gpu"

    def __init__(self, *, batch_size: int = 64, dtype: str = "float16", warmup: int = 20, repeats: int = 100,
                 device: int = 0, channels_last: bool = True, host_lock: bool | str = True) -> None:
        for key, value in (("batch_size", batch_size), ("repeats", repeats)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"hardware.{key} must be a positive integer, got {value!r}")
        if dtype not in DTYPES:
            raise ValueError(f"hardware.dtype must be one of {list(DTYPES)}, got {dtype!r}")
        self.host_lock, self.lock_path = host_lock, lock_path(host_lock)
        ok, why = cuda_available()
        if not ok:
            raise ValueError(f"hardware=gpu: {why}; use hardware=cpu, hardware=lut or hardware=analytic here")
        import torch

        if not 0 <= device < torch.cuda.device_count():
            raise ValueError(f"hardware.device must be in [0, {torch.cuda.device_count() - 1}], got {device!r}")
        self.batch_size, self.dtype, self.warmup, self.repeats = batch_size, dtype, warmup, repeats
        self.device, self.channels_last = device, channels_last

    def quick(self, *, warmup: int, repeats: int) -> CudaCostModel:
        return CudaCostModel(batch_size=self.batch_size, dtype=self.dtype, warmup=warmup, repeats=repeats,
                             device=self.device, channels_last=self.channels_last, host_lock=self.host_lock)

    def latency_ms(self, artifact: Any) -> Measurement:
        import copy

        import torch

        module = getattr(artifact, "module", None)
        if module is None:
            raise ValueError("hardware=gpu needs the artifact's PyTorch module, and this one has none")
        dev, dtype = torch.device("cuda", self.device), getattr(torch, self.dtype)
        torch.backends.cudnn.benchmark = True
        model = copy.deepcopy(module).eval().to(dev, dtype)
        x = torch.from_numpy(_ort.example_batch(getattr(artifact, "example", None), artifact.input_shape,
                                                self.batch_size)).to(dev, dtype)
        if self.channels_last and x.dim() == 4:
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        times = np.empty(self.repeats)
        with host_lock(self.lock_path) as waited, torch.inference_mode(), torch.cuda.device(dev):
            for _ in range(self.warmup):
                model(x)
            torch.cuda.synchronize(dev)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
            for i in range(self.repeats):
                starts[i].record()
                model(x)
                ends[i].record()
            torch.cuda.synchronize(dev)
            for i in range(self.repeats):
                times[i] = starts[i].elapsed_time(ends[i])
        q1, median, q3 = np.percentile(times, [25, 50, 75])
        return Measurement(float(median), float(q3 - q1), tuple(float(t) for t in times), waited_s=waited)

    def describe(self) -> dict[str, Any]:
        import torch

        return {
            "cost_model": self.name, "device": torch.cuda.get_device_name(self.device),
            "runtime": f"torch {torch.__version__} CUDA {torch.version.cuda} cuDNN {torch.backends.cudnn.version()}",
            "dtype": self.dtype, "batch_size": self.batch_size, "warmup": self.warmup, "repeats": self.repeats,
            "channels_last": self.channels_last, "predicted": False,
            "note": f"quantized layers run dequantized in {self.dtype}", "neighbours": neighbours(self.lock_path),
        }
