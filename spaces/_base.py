"""The extension points of this package: a knob (one compression technique over a model's layers) and a
family of student architectures.

A knob is one module under ``spaces/knobs/`` and one config ``conf/space/knob/<name>.yaml``. Its class
declares everything the rest of the engine needs: the parameter prefix (``knob``), the phase it acts in,
its per-layer choices, how it changes a layer (``apply_``), what the report and the model card call it,
and its uniform baselines. Report, pick, bundle, card, baselines and the contract tests discover knobs from
``BaseKnob.registry``; nothing keeps a second list.
"""
from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import optuna
from torch import nn

from ._layers import find_layers


class Phase(enum.IntEnum):
    """When a knob acts on a layer, in this order. Knobs of one phase are exclusive per layer: where several
    cover a layer, a trial first chooses which (parameter ``<phase>.<layer fqn>``), then that knob's value."""

    PRUNE = 0  # output channels removed across the graph (before anything else changes a layer's shape)
    FACTORIZE = 1  # a layer replaced by a product of smaller layers
    SPARSIFY = 2  # single weights masked to zero (BatchNorm still in place; recovery fine-tunes after this)
    QUANTIZE = 3  # weights stored in fewer bits: after conv+BN folding, so what is stored is what runs
    ACTIVATIONS = 4  # a layer's input quantized (calibrated range)

    @property
    def folded(self) -> bool:
        """True for the phases that act after conv+BN folding (``JointSpace.finish``)."""
        return self >= Phase.QUANTIZE

    @property
    def selector(self) -> str:
        """The parameter prefix of the choice between several knobs of this phase on one layer."""
        return self.name.lower()


class BaseKnob(abc.ABC):
    """One compression technique, chosen per Conv2d/Linear layer: parameter ``<knob>.<layer fqn>``.

    ``sample`` only calls ``trial.suggest_*``; ``apply_`` never sees a trial and changes the model in place
    (the joint space copies the teacher once). A subclass declares, as class attributes:

    - ``knob``: the parameter prefix; ``phase``: when it acts (``Phase``);
    - ``label`` (report titles), ``short`` (hovers), ``harder`` (``"low"`` or ``"high"``: which end of its
      values compresses harder, drawn darker), ``unit``, ``scale`` (``"fraction"``: values in [0, 1];
      ``"log2"``: bit-widths), ``technique`` (the model card: "<n> layers were <technique>").

    and implements ``choices``, ``check``, ``identity_value`` and ``apply_``. Optional hooks: ``eligible``
    (which matched layers it can change), ``suggest`` (default: categorical over ``choices``), ``baselines``
    and ``describe`` (the model card's column for a layer).
    """

    knob: ClassVar[str]
    phase: ClassVar[Phase]
    label: ClassVar[str]
    short: ClassVar[str]
    harder: ClassVar[Literal["low", "high"]]
    unit: ClassVar[str] = ""
    scale: ClassVar[Literal["fraction", "log2"]] = "fraction"
    technique: ClassVar[str]
    #: other knobs' values a choice of this knob needs to act on a layer (``abits``: ``{"bits": 8}``); the
    #: sensitivity sweep applies them alongside and measures the choice against them
    sweep_context: ClassVar[dict[str, Any]] = {}

    #: every concrete knob class by its ``knob`` name (filled as the classes are defined)
    registry: ClassVar[dict[str, type[BaseKnob]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "__abstractmethods__", None) or "knob" not in cls.__dict__:
            return
        missing = [a for a in ("phase", "label", "short", "harder", "technique") if not hasattr(cls, a)]
        if missing or cls.harder not in ("low", "high") or cls.scale not in ("fraction", "log2"):
            raise TypeError(f"knob class {cls.__name__} must declare {missing or 'harder low|high, scale'}")
        if not isinstance(cls.phase, Phase):
            raise TypeError(f"knob class {cls.__name__}: phase must be a spaces.Phase, got {cls.phase!r}")
        if cls.knob in {p.selector for p in Phase}:
            raise TypeError(f"knob class {cls.__name__}: {cls.knob!r} is the name of a phase")
        known = BaseKnob.registry.get(cls.knob)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(f"knob {cls.knob!r} is declared twice: {known.__module__} and {cls.__module__}")
        BaseKnob.registry[cls.knob] = cls

    #: why ``eligible`` leaves a matched layer out (said at start-up, ``left_out``)
    ineligible: ClassVar[str] = "this knob cannot change it"

    def __init__(self, *, model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> None:
        matched = find_layers(model, include=include, exclude=exclude, key=f"space.knobs.{self.knob}")
        self.layers = self.eligible(model, matched)
        #: {layer: why} of the layers the config matched and this knob leaves out (``eligible``, ``spaces.probe``)
        self.left_out = {f: self.ineligible for f in matched if f not in self.layers}

    # ------------------------------------------------------------------ what a subclass implements
    @abc.abstractmethod
    def choices(self, fqn: str) -> tuple[Any, ...]:
        """The values this knob may take on layer ``fqn``, the identity included. For a knob sampled from a
        continuous range, a grid over it (what the sensitivity sweep tries)."""

    @abc.abstractmethod
    def check(self, value: Any, key: str) -> None:
        """Raise ``ValueError`` naming ``key``, ``value`` and what is allowed if ``value`` is not."""

    @property
    @abc.abstractmethod
    def identity_value(self) -> Any:
        """The value that leaves a layer unchanged."""

    @abc.abstractmethod
    def apply_(self, model: nn.Module, values: Mapping[str, Any]) -> None:
        """Change ``model`` in place: ``values`` maps layer fqn -> this knob's value (identity ones included)."""

    # ------------------------------------------------------------------ hooks with defaults
    def eligible(self, model: nn.Module, layers: list[str]) -> list[str]:
        """Narrow the matched layers to those this knob can change. Default: all."""
        return layers

    def suggest(self, trial: optuna.Trial, fqn: str) -> Any:
        """One value for layer ``fqn``; only ``trial.suggest_*``."""
        return trial.suggest_categorical(self.name(fqn), self.choices(fqn))

    def baselines(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        """Hand-made policies this knob stands for: ``{name: {knob: value or {fqn: value}}}``. A policy may name
        other knobs (``{"channels": 0.5, "bits": 8, "abits": 8}``); it runs only where the space has them all
        and every value is one of their choices."""
        return {}

    def describe(self, reference: nn.Module, built: nn.Module) -> str:
        """What this knob made of one layer, for the model card: ``reference`` is the layer before compression,
        ``built`` what stands for it in the compressed model (the layer, or the module that replaced it)."""
        return ""

    # ------------------------------------------------------------------ shared
    def name(self, fqn: str) -> str:
        return f"{self.knob}.{fqn}"

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """One value per layer (every layer; see ``JointSpace.sample`` for exclusive knobs)."""
        return {self.name(fqn): self.suggest(trial, fqn) for fqn in self.layers}

    def uniform(self, value: Any) -> dict[str, Any]:
        """The same value for every layer (how the hand-made baselines are written)."""
        return {self.name(fqn): value for fqn in self.layers}

    def identity(self) -> dict[str, Any]:
        return self.uniform(self.identity_value)

    def values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """This knob's value per layer fqn, checked; a missing layer is an error."""
        out = {}
        for fqn in self.layers:
            key = self.name(fqn)
            if key not in params:
                raise ValueError(f"params has no {key!r}; this knob needs a value for each of {self.layers}")
            self.check(params[key], key)
            out[fqn] = params[key]
        return out

    def apply(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        """A copy of ``model`` with this knob alone applied (``params`` holds ``<knob>.<fqn>`` for every layer)."""
        import copy

        model = copy.deepcopy(model)
        self.apply_(model, self.values(params))
        return model


class BaseFamily(abc.ABC):
    """A family of student architectures: the models a student trial may train from the teacher.

    ``sample`` only calls ``trial.suggest_*`` (parameters named ``student.<key>``) and returns a plain dict;
    ``build(params)`` returns the untrained student, the same one every time for the same params.
    """

    @abc.abstractmethod
    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest one architecture; only ``trial.suggest_*`` calls."""

    @abc.abstractmethod
    def build(self, params: Mapping[str, Any]) -> nn.Module:
        """The untrained student of ``params`` (``student.*`` keys; others are ignored), seeded."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """The parameter names ``sample`` suggests (``student.<key>``)."""

    def grid(self) -> list[dict[str, Any]]:
        """Every architecture's params (``student.*``), where the family can list them: what a search may start
        from (``StudentSpace.starts``). ``[]``: it cannot, and a search starts from sampled students only."""
        return []
