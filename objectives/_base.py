"""The extension points of this package: an objective, and a hardware cost model for latency."""
from __future__ import annotations

import abc
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal


@dataclass(frozen=True)
class Measurement:
    """A latency in milliseconds with its spread (interquartile range) over ``samples`` repeats.

    ``waited_s``: the seconds the measurement waited for the host lock (``objectives._hostlock``) before it
    could time; None where it took no lock (a predictor, or ``hardware.host_lock=false``).
    """

    value_ms: float
    spread_ms: float = 0.0
    samples: tuple[float, ...] = field(default=(), repr=False)
    waited_s: float | None = None


@dataclass(frozen=True)
class Outcome:
    """What a trial produced, as objectives read it: ``model`` (the compressed PyTorch model as trained, eval
    mode) and ``artifact`` (``spaces.Artifact``: the packed weights, the ONNX model, the plain module, example
    inputs and the input shape)."""

    model: Any
    artifact: Any


class BaseObjective(abc.ABC):
    """One number a trial is scored by, read from what the trial produced (``__call__(outcome)``).

    A subclass declares ``name`` (the study's metric name, ``objectives=[...]`` in the config), ``direction``,
    ``unit``, how figures show it (``label``, ``display``: the factor from the value to the label's unit,
    ``log_axis``), ``structural`` (True: it depends on the model's structure only, so a student's value is known
    before it trains) and ``relative`` (True: the hypervolume measures it against the uncompressed model's
    value, reference point 1.1 x that; False: it is a fraction in [0, 1], reference 0). Its constructor takes,
    by keyword, what it needs of ``images``, ``labels`` (the validation split), ``cost_model`` and
    ``input_shape`` (see ``build``).
    """

    name: ClassVar[str]
    direction: ClassVar[Literal["maximize", "minimize"]]
    unit: ClassVar[str] = ""
    label: ClassVar[str]
    display: ClassVar[float] = 1.0
    log_axis: ClassVar[bool] = False
    structural: ClassVar[bool] = True
    relative: ClassVar[bool] = True

    #: every concrete objective class by its ``name``
    registry: ClassVar[dict[str, type[BaseObjective]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "__abstractmethods__", None) or "name" not in cls.__dict__:
            return
        if getattr(cls, "direction", None) not in ("maximize", "minimize") or not hasattr(cls, "label"):
            raise TypeError(f"objective class {cls.__name__} must declare direction (maximize|minimize) and label")
        if not cls.relative and cls.direction != "maximize":
            raise TypeError(f"objective class {cls.__name__}: an absolute objective (relative=False) is a fraction "
                            "to maximise")
        known = BaseObjective.registry.get(cls.name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(f"objective {cls.name!r} is declared twice: {known.__module__} and {cls.__module__}")
        BaseObjective.registry[cls.name] = cls

    @abc.abstractmethod
    def __call__(self, outcome: Outcome) -> float | Measurement:
        """The trial's value (a ``Measurement`` for a timed one: its ``value_ms`` is the value)."""

    def attrs(self, value: float | Measurement) -> dict[str, Any]:
        """What the trial records beside the value (e.g. a measurement's spread). Default: nothing."""
        return {}


def objective_class(name: str, key: str = "objectives") -> type[BaseObjective]:
    """The objective class called ``name``; a ValueError naming ``key`` and the known names otherwise."""
    if name not in BaseObjective.registry:
        raise ValueError(f"{key}: no objective {name!r}; known: {sorted(BaseObjective.registry)}")
    return BaseObjective.registry[name]


def build(names: list[str] | tuple[str, ...], **context: Any) -> list[BaseObjective]:
    """The objectives ``names``, in order, each given the ``context`` its constructor asks for by keyword."""
    if isinstance(names, str) or not names:
        raise ValueError(f"objectives must be a non-empty list of objective names, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"objectives: each objective may appear once, got {list(names)}")
    out = []
    for name in names:
        cls = objective_class(name)
        wanted = inspect.signature(cls).parameters
        missing = [p for p, v in wanted.items() if v.default is v.empty and p not in context]
        if missing:
            raise ValueError(f"objectives: {name!r} needs {missing}, which this entry point does not provide")
        out.append(cls(**{p: context[p] for p in wanted if p in context}))
    return out


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
        (``search/pick/remeasure.py``): this runtime's own where it cannot time the ONNX model (no ``times_onnx``:
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
