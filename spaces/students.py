"""Students: a trial either compresses the trained model itself or trains a smaller architecture from it.

``StudentFamily`` is a configured family of architectures (any constructor and the keyword choices to search
over it). ``StudentSpace`` puts the choice ``arch`` (``"teacher"`` or ``"student"``) in front of the
compression knobs: a teacher trial is exactly a ``JointSpace`` trial; a student trial samples the family's
``student.*`` parameters, builds the student, and samples the compression knobs that the config lets apply to
students on *the student's* layers. A student's knob parameters keep the names ``<knob>.<layer fqn>``: where a
student layer has the teacher's fqn, the parameter is shared with the same distribution, which Optuna allows.

Replay is unchanged: ``space.apply(teacher, trial.params)`` gives, for a student trial, the *untrained* student
with its compression applied; training happens in the pipeline between ``apply_structure`` and ``finish``, as
recovery does for a teacher trial.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from ._base import BaseFamily, BaseKnob
from .fold import fold_batchnorm
from .joint import JointSpace

ARCH = "arch"
TEACHER, STUDENT = "teacher", "student"
ARCHS = (TEACHER, STUDENT)  # the one distribution of ``arch`` in every study, whatever the space allows
FIXED_ARCH = "fixed_arch"  # user attribute of an enqueued trial that must be of this architecture (the baselines)
PREFIX = "student."
DISTILL_PREFIX = "distill."


def _plain(value: Any) -> Any:
    """A value Optuna can store as a categorical choice (None, bool, int, float, str)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"{value!r} is not a plain value (None, bool, int, float or str)")


class ChoiceFamily(BaseFamily):
    """A family whose architecture is one categorical choice per key: ``student.<key>`` among ``choices[key]``.

    Holds what ``StudentFamily`` and ``spaces.derive.DerivedFamily`` share: the choices checked when configured
    (``key`` names the config in errors), ``names``, ``sample`` and ``arch`` (the checked values of a trial's params).
    """

    def __init__(self, *, choices: Mapping[str, Sequence[Any]], key: str = "space.student.family") -> None:
        if not choices:
            raise ValueError(f"{key}.choices must name at least one keyword with its values, got {choices!r}")
        self.key = key
        self.choices: dict[str, tuple[Any, ...]] = {}
        for name, values in choices.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"{key}.choices.{name} must be a non-empty list of values, got {values!r}")
            try:
                self.choices[str(name)] = tuple(_plain(v) for v in values)
            except ValueError as exc:
                raise ValueError(f"{key}.choices.{name}: {exc}") from exc

    def names(self) -> list[str]:
        return [PREFIX + k for k in self.choices]

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        return {PREFIX + k: trial.suggest_categorical(PREFIX + k, v) for k, v in self.choices.items()}

    def grid(self) -> list[dict[str, Any]]:
        return [dict(zip(self.names(), combo)) for combo in itertools.product(*self.choices.values())]

    def arch(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The choices of ``params`` by key (no prefix), checked: a missing or unknown value names its key."""
        out = {}
        for name, allowed in self.choices.items():
            key = PREFIX + name
            if key not in params:
                raise ValueError(f"params has no {key!r}; a student trial needs {self.names()}")
            if params[key] not in allowed or isinstance(params[key], bool) != any(isinstance(a, bool) for a in allowed):
                raise ValueError(f"{key}: {params[key]!r} is not among the choices {list(allowed)}")
            out[name] = params[key]
        return out


class StudentFamily(ChoiceFamily):
    """Students built by ``net(**fixed, **choice)``, one keyword choice per entry of ``choices``.

    ``choices={"width_mult": [0.25, 0.5], "separable": [False, True]}`` searches ``student.width_mult`` and
    ``student.separable``; ``net`` is any callable returning an ``nn.Module`` (in Hydra, a ``_partial_`` config
    of ``search.models.SmallCNN`` or ``search.models.torchvision_model``). Weights are initialised under
    ``seed``, so a student is the same every time it is built.
    """

    def __init__(self, *, net: Callable[..., nn.Module], choices: Mapping[str, Sequence[Any]], seed: int = 0,
                 key: str = "space.student.family") -> None:
        if not callable(net):
            raise ValueError(f"{key}.net must be a callable building an nn.Module, got {net!r}")
        super().__init__(choices=choices, key=key)
        self.net, self.seed = net, int(seed)
        for combo in self._corners():  # the smallest and largest choices must build: fail at start-up, not mid-search
            self.build(combo)

    def _corners(self) -> list[dict[str, Any]]:
        first = {PREFIX + k: v[0] for k, v in self.choices.items()}
        last = {PREFIX + k: v[-1] for k, v in self.choices.items()}
        return [first] if first == last else [first, last]

    def build(self, params: Mapping[str, Any]) -> nn.Module:
        kwargs = self.arch(params)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            try:
                model = self.net(**kwargs)
            except Exception as exc:
                raise ValueError(f"{self.key}: cannot build a student with {kwargs}: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise ValueError(f"{self.key}.net built a {type(model).__name__}, not an nn.Module")
        return model.eval()


class StudentSpace:
    """``arch`` first, then either the teacher's knobs or a student architecture and the knobs for its layers.

    ``knobs(model)`` builds the compression knobs for a student model (a ``JointSpace``; the same knob configs
    as the teacher's, limited to those the config lets apply to students). ``searched`` holds training choices
    sampled for student trials (``distill.temperature``, ``distill.alpha``), which ``apply`` ignores.
    Everything else a teacher trial needs (baselines, ``space["bits"]``) is the teacher's ``JointSpace``.
    """

    def __init__(
        self, *, teacher: JointSpace, family: BaseFamily, knobs: Callable[[nn.Module], JointSpace | None],
        arch: Sequence[str] = (TEACHER, STUDENT), searched: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        arch = tuple(arch)
        if not arch or any(a not in (TEACHER, STUDENT) for a in arch) or len(set(arch)) != len(arch):
            raise ValueError(f"space.arch must list 'teacher' and/or 'student' once each, got {list(arch)}")
        if not isinstance(family, BaseFamily):
            raise ValueError(f"space.student.family: {type(family).__name__} is not a spaces.BaseFamily")
        self.teacher, self.family, self.arch = teacher, family, arch
        self._knobs = knobs
        self._cache: dict[str, JointSpace | None] = {}
        self.searched = {DISTILL_PREFIX + k: tuple(v) for k, v in (searched or {}).items()}

    # ---------------------------------------------------------------- what a teacher trial needs
    @property
    def spaces(self) -> list[BaseKnob]:
        return self.teacher.spaces

    def __getitem__(self, knob: str) -> BaseKnob:
        return self.teacher[knob]

    def __contains__(self, knob: str) -> bool:
        return knob in self.teacher

    def identity(self) -> dict[str, Any]:
        return {ARCH: TEACHER, **self.teacher.identity()}

    def with_values(self, **knob_params: Mapping[str, Any]) -> dict[str, Any]:
        return {ARCH: TEACHER, **self.teacher.with_values(**knob_params)}

    # ---------------------------------------------------------------- dispatch
    def is_student(self, params: Mapping[str, Any]) -> bool:
        value = params.get(ARCH, self.arch[0] if len(self.arch) == 1 else TEACHER)
        if value not in (TEACHER, STUDENT):
            raise ValueError(f"{ARCH}: {value!r} is not one of {[TEACHER, STUDENT]}")
        return value == STUDENT

    def student_knobs(self, params: Mapping[str, Any]) -> JointSpace | None:
        """The knobs for the student of ``params`` (built once per architecture); None if no knob applies."""
        key = json.dumps({k: params[k] for k in self.family.names() if k in params}, sort_keys=True, default=str)
        if key not in self._cache:
            self._cache[key] = self._knobs(self.family.build(params))
        return self._cache[key]

    def _parts(self, params: Mapping[str, Any]) -> tuple[JointSpace | None, dict[str, Any]]:
        """The knob space a trial's params belong to, and those params without ``arch``/``student.*``/``distill.*``."""
        student = self.is_student(params)
        rest = {k: v for k, v in params.items() if k != ARCH}
        if not student:
            return self.teacher, rest
        for key, allowed in self.searched.items():
            if key not in rest:
                raise ValueError(f"params has no {key!r}; a student trial of this space needs it")
            if rest[key] not in allowed:
                raise ValueError(f"{key}: {rest[key]!r} is not among the choices {list(allowed)}")
        rest = {k: v for k, v in rest.items() if not k.startswith((PREFIX, DISTILL_PREFIX))}
        return self.student_knobs(params), rest

    def starts(self, k: int, teacher: nn.Module, policy: str = "uniform_int8") -> list[dict[str, Any]]:
        """``k`` student trials a search starts with (``guided.students``), so that a search over both tries students
        from its start, not only where its sampler happens to draw one: the family's architectures with fewer
        parameters than ``teacher`` (one per parameter count), spread from the largest towards the middle size
        (the largest keeps most of the teacher; a smaller one tries the size end), each with its knobs at the
        student's ``policy`` (a hand-made baseline its knobs declare, ``JointSpace.policies``; uncompressed where
        they declare none) and every searched distillation setting at its middle choice."""
        if k < 1 or STUDENT not in self.arch:
            return []
        limit, sizes = sum(p.numel() for p in teacher.parameters()), {}
        for params in self.family.grid():
            n = sum(p.numel() for p in self.family.build(params).parameters())
            if n < limit:
                sizes.setdefault(n, params)  # one architecture per size: ``derived`` depths that drop nothing repeat
        ordered = [sizes[n] for n in sorted(sizes, reverse=True)]
        if len(ordered) > k:
            ordered = [ordered[i] for i in sorted({round(x) for x in np.linspace(0, (len(ordered) - 1) / 2, k)})]
        out = []
        for params in ordered:
            trial = {ARCH: STUDENT, **params, **{key: v[len(v) // 2] for key, v in self.searched.items()}}
            knobs = self.student_knobs(trial)
            if knobs is not None:
                policies = knobs.policies(self.family.build(params))
                trial.update(policies.get(policy, policies["uncompressed"]))
            out.append(trial)
        return out

    # ---------------------------------------------------------------- BaseSpace-like interface
    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """``arch`` is sampled where the space allows both; where it allows one, searched trials are of that one
        and do not record ``arch``, and an enqueued trial of the other (user attribute ``fixed_arch``, as the
        baselines carry) records it. ``arch`` always has the same distribution (``ARCHS``), as Optuna requires."""
        fixed = trial.user_attrs.get(FIXED_ARCH)
        if len(self.arch) == 2 or (fixed is not None and fixed != self.arch[0]):
            arch = trial.suggest_categorical(ARCH, ARCHS)
            head = {ARCH: arch}
        else:
            arch, head = self.arch[0], {}
        if arch == TEACHER:
            return {**head, **self.teacher.sample(trial)}
        params: dict[str, Any] = {**head, **self.family.sample(trial)}
        params.update({k: trial.suggest_categorical(k, v) for k, v in self.searched.items()})
        knobs = self.student_knobs(params)
        if knobs is not None:
            params.update(knobs.sample(trial))
        return params

    def apply(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        return self.finish(self.apply_structure(model, params), params)

    def apply_structure(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        """Teacher trial: the teacher's structural knobs. Student trial: the untrained student, ``model`` unused."""
        space, rest = self._parts(params)
        if not self.is_student(params):
            return space.apply_structure(model, rest)
        student = self.family.build(params)
        if space is None:
            if rest:
                raise ValueError(f"params: unknown parameter(s) {sorted(rest)}; no knob applies to students")
            return student
        return space.apply_structure(student, rest)

    def finish(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        space, rest = self._parts(params)
        if space is None:
            return fold_batchnorm(model)
        return space.finish(model, rest)

    def changes_structure(self, params: Mapping[str, Any]) -> bool:
        """A student always needs training; a teacher trial as its knobs say."""
        space, rest = self._parts(params)
        return self.is_student(params) or space.changes_structure(rest)

    def quantizes(self, params: Mapping[str, Any]) -> bool:
        space, rest = self._parts(params)
        return space is not None and space.quantizes(rest)
