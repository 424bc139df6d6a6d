"""The extension point of the cost models: ``BaseCostModel``, how long an artifact takes on a device, and the
``Measurement`` it returns."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Measurement:
    """A latency in milliseconds with its spread (interquartile range) over ``samples`` repeats.

    ``waited_s``: the seconds the measurement waited for the host lock (``objectives.hardware._hostlock``) before it
    could time; None where it took no lock (a predictor, or ``hardware.host_lock=false``).
    """

    value_ms: float
    spread_ms: float = 0.0
    samples: tuple[float, ...] = field(default=(), repr=False)
    waited_s: float | None = None



class BaseCostModel(abc.ABC):
    """How long an artifact takes on a device: measured, looked up or estimated.

    An artifact is what ``spaces.materialize`` returns: ``onnx`` (bytes), ``input_shape``, and
    where available ``example`` (real input samples) and ``module`` (the plain PyTorch model).
    """

    name: ClassVar[str]
    #: True when ``latency_ms`` times the artifact on a real runtime; False for predictors.
    measures: ClassVar[bool] = True
    #: the files a picked bundle ships for this runtime beside ``model.onnx`` and ``weights.cpz`` (for example
    #: ``("model.xml", "model.bin")``); () where the runtime runs ``model.onnx`` itself
    runtime_files: ClassVar[tuple[str, ...]] = ()

    def export(self, artifact: Any) -> dict[str, bytes]:
        """This runtime's own files for ``artifact``, by the names of ``runtime_files``: what pick writes into a
        bundle. ``latency_ms`` times these files where the artifact carries them (``artifact.files``, a bundle's),
        else exports them anew. Default: none."""
        return {}

    @property
    def kept_names(self) -> tuple[str, ...]:
        """The files a search keeps beside a trial's ONNX model so that the end of the search can time it again
        (``search.loop.remeasure``): this runtime's own where it cannot time the ONNX model (no ``times_onnx``:
        ExecuTorch exports the PyTorch module, which is not kept); none otherwise."""
        return () if getattr(self, "times_onnx", False) else tuple(self.runtime_files)

    def kept_files(self, artifact: Any) -> dict[str, bytes]:
        """The files of ``kept_names`` for ``artifact`` (``export``'s)."""
        return self.export(artifact) if self.kept_names else {}

    def load(self, files: dict[str, bytes]) -> Any:
        """A callable that runs a float32 batch (numpy, NCHW) through ``files`` (``export``'s) on this runtime and
        returns the logits as numpy: pick scores a bundle's accuracy on its runtime with it."""
        raise NotImplementedError(f"cost model {self.name!r} ships no runtime files of its own")

    @abc.abstractmethod
    def latency_ms(self, artifact: Any) -> Measurement:
        """Latency of one batch of the artifact's ONNX model."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Where and how it measures: at least ``cost_model`` (its name) and ``device``."""

    def reference(self) -> BaseCostModel:
        """The cost model that measures on the real runtime: pick verifies with it. Itself if it measures."""
        return self

    def measure_many(self, artifacts: list[Any]) -> list[Measurement]:
        """Each artifact's latency; a measuring cost model interleaves their timed runs (drift hits all alike)."""
        return [self.latency_ms(a) for a in artifacts]

    def quick(self, *, warmup: int, repeats: int) -> BaseCostModel:
        """The same cost model with a short protocol (``warmup`` and ``repeats`` runs, no settling): the
        sensitivity sweep times many small deltas with it. Itself for a predictor."""
        return self
