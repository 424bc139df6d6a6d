"""The extension point of this package: a space of choices and how a choice changes a model."""
from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import optuna
from torch import nn

from ._layers import find_layers


class BaseSpace(abc.ABC):
    """A family of per-layer choices (a *knob*) over a model's Conv2d/Linear layers.

    ``sample`` only calls ``trial.suggest_*`` and returns a plain dict; ``apply`` never sees a
    trial. Parameters are named ``<knob>.<layer fqn>``, so a stored trial replays exactly:
    ``space.apply(teacher, trial.params)``.
    """

    knob: ClassVar[str]
    #: Position in a joint space: structure first (channels, rank), then values (sparsity, bits).
    order: ClassVar[int]
    #: Applied after conv+BN folding (quantization must see the folded weights).
    after_folding: ClassVar[bool] = False

    def __init__(
        self, *, model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()
    ) -> None:
        self.layers = self.eligible(
            model, find_layers(model, include=include, exclude=exclude, key=f"space.knobs.{self.knob}")
        )

    def eligible(self, model: nn.Module, layers: list[str]) -> list[str]:
        """Hook: narrow the matched layers to those this knob can change. Default: all."""
        return layers

    def name(self, fqn: str) -> str:
        return f"{self.knob}.{fqn}"

    @abc.abstractmethod
    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest one value per layer; only ``trial.suggest_*`` calls."""

    @abc.abstractmethod
    def apply(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        """A new module with the choice applied; ``model`` is left untouched."""

    @abc.abstractmethod
    def check(self, value: Any, key: str) -> None:
        """Raise ``ValueError`` naming ``key``, ``value`` and what is allowed if ``value`` is not."""

    @property
    @abc.abstractmethod
    def identity_value(self) -> Any:
        """The value that leaves a layer unchanged."""

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
                raise ValueError(f"params has no {key!r}; this space needs {self.identity()!r}")
            self.check(params[key], key)
            out[fqn] = params[key]
        return out


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
