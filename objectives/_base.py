"""The extension point of this package: an objective (``BaseObjective``), one number a trial is scored by."""
from __future__ import annotations

import abc
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from .hardware._base import Measurement


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
