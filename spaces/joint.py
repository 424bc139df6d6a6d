"""Several knobs in one trial, phase by phase: prune, factorize, sparsify, then (BN folded) quantize weights and
activations. Knobs of one phase are exclusive per layer: where several cover a layer, the trial first chooses
which (``<phase>.<fqn>``, e.g. ``factorize.features.4`` in ``["rank", "tucker"]``) and samples only that one."""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from torch import nn

from ._base import BaseKnob, Phase
from .fold import fold_batchnorm


class JointSpace:
    """Composes knobs into one parameter dict.

    ``apply(teacher, params)`` is the whole replay of a trial: the knobs of the phases before folding
    (``apply_structure``, BatchNorm kept), then fold conv+BN and the quantization phases (``finish``), each a
    new module built from the previous one. Recovery may fine-tune between the two halves.
    """

    def __init__(self, knobs: Sequence[BaseKnob]) -> None:
        names = [k.knob for k in knobs]
        if len(set(names)) != len(names):
            raise ValueError(f"space: each knob may appear once, got {names}")
        self.spaces = sorted(knobs, key=lambda k: k.phase)  # stable: config order within a phase
        # {(phase, fqn): [knob names]} where a layer has several knobs of one phase to choose from
        covering: dict[tuple[Phase, str], list[str]] = {}
        for k in self.spaces:
            for fqn in k.layers:
                covering.setdefault((k.phase, fqn), []).append(k.knob)
        self.exclusive = {key: tuple(v) for key, v in covering.items() if len(v) > 1}

    @property
    def knobs(self) -> list[BaseKnob]:
        return self.spaces

    def __getitem__(self, knob: str) -> BaseKnob:
        for k in self.spaces:
            if k.knob == knob:
                return k
        raise KeyError(knob)

    def __contains__(self, knob: str) -> bool:
        return any(k.knob == knob for k in self.spaces)

    # ---------------------------------------------------------------- exclusive knobs
    @staticmethod
    def selector(phase: Phase, fqn: str) -> str:
        return f"{phase.selector}.{fqn}"

    def selectors(self) -> dict[str, tuple[str, ...]]:
        """{selector parameter: the knob names it chooses among}."""
        return {self.selector(p, f): names for (p, f), names in self.exclusive.items()}

    def _chosen(self, knob: BaseKnob, fqn: str, params: Mapping[str, Any]) -> bool:
        """Whether ``knob`` is the one of its phase acting on ``fqn`` in ``params``."""
        names = self.exclusive.get((knob.phase, fqn))
        if names is None:
            return True
        key = self.selector(knob.phase, fqn)
        if key not in params:
            raise ValueError(f"params has no {key!r}; layer {fqn} needs a choice among {list(names)}")
        if params[key] not in names:
            raise ValueError(f"{key}: {params[key]!r} is not among the choices {list(names)}")
        return params[key] == knob.knob

    # ---------------------------------------------------------------- sampling and replay
    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for k in self.spaces:
            for fqn in k.layers:
                names = self.exclusive.get((k.phase, fqn))
                if names is not None:
                    key = self.selector(k.phase, fqn)
                    if key not in params:
                        params[key] = trial.suggest_categorical(key, names)
                    if params[key] != k.knob:
                        continue
                params[k.name(fqn)] = k.suggest(trial, fqn)
        return params

    def resolve(self, params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """{knob: {fqn: value}} for every knob and layer: a layer whose phase chose another knob gets this
        knob's identity. Unknown parameters are an error."""
        known = set(self.identity()) | {n for k in self.spaces for n in map(k.name, k.layers)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"params: unknown parameter(s) {unknown}; this space takes {sorted(known)}")
        out: dict[str, dict[str, Any]] = {}
        for k in self.spaces:
            given = {}
            for fqn in k.layers:
                key = k.name(fqn)
                if not self._chosen(k, fqn, params):
                    given[key] = k.identity_value
                elif key in params:
                    given[key] = params[key]
            out[k.knob] = k.values(given)
        return out

    def apply(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        return self.finish(self.apply_structure(model, params), params)

    def _apply_phases(self, model: nn.Module, params: Mapping[str, Any], folded: bool) -> nn.Module:
        values = self.resolve(params)
        for k in self.spaces:
            if k.phase.folded == folded:
                k.apply_(model, values[k.knob])
        return model

    def apply_structure(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        """The phases before folding (prune, factorize, sparsify), on a copy, BatchNorm still in place."""
        return self._apply_phases(copy.deepcopy(model), params, folded=False)

    def finish(self, model: nn.Module, params: Mapping[str, Any]) -> nn.Module:
        """Fold conv+BN (a copy), then the phases that need folded weights (quantization)."""
        return self._apply_phases(fold_batchnorm(model), params, folded=True)

    def _changes(self, params: Mapping[str, Any], folded: bool) -> bool:
        values = self.resolve(params)
        return any(v != k.identity_value for k in self.spaces if k.phase.folded == folded
                   for v in values[k.knob].values())

    def changes_structure(self, params: Mapping[str, Any]) -> bool:
        return self._changes(params, folded=False)

    def quantizes(self, params: Mapping[str, Any]) -> bool:
        return self._changes(params, folded=True)

    # ---------------------------------------------------------------- policies
    def identity(self) -> dict[str, Any]:
        """The parameters of the uncompressed model: every knob at its identity (selectors: the phase's first)."""
        params: dict[str, Any] = {}
        for key, names in self.selectors().items():
            params[key] = names[0]
        for k in self.spaces:
            for fqn in k.layers:
                if self._chosen(k, fqn, params):
                    params[k.name(fqn)] = k.identity_value
        return params

    def with_values(self, **knob_params: Mapping[str, Any]) -> dict[str, Any]:
        """The identity policy with some parameters replaced (``with_values(bits=space['bits'].uniform(8))``; each
        key names its knob, whatever keyword it comes under); a layer given a non-identity value by a knob of a
        shared phase selects that knob."""
        params = self.identity()
        for overrides in knob_params.values():
            for key, value in overrides.items():
                name, _, fqn = key.partition(".")
                if name not in self:
                    raise ValueError(f"params: {key!r} names no knob of this space {[k.knob for k in self.spaces]}")
                knob = self[name]
                names = self.exclusive.get((knob.phase, fqn))
                if names is not None and value != knob.identity_value:
                    selector = self.selector(knob.phase, fqn)
                    params.pop(f"{params[selector]}.{fqn}", None)
                    params[selector] = knob.knob
                if self._chosen(knob, fqn, params):
                    params[key] = value
        return params

    def policies(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        """The hand-made baselines the knobs declare, as full params: ``{name: params}``, ``uncompressed`` first.
        A policy is left out where the space lacks one of its knobs or a value is not among a knob's choices."""
        out = {"uncompressed": self.identity()}
        for k in self.spaces:
            for name, policy in k.baselines(model).items():
                params = self._policy(policy)
                if params is not None:
                    out[name] = params
        return out

    def _policy(self, policy: Mapping[str, Any]) -> dict[str, Any] | None:
        overrides = {}
        for name, value in policy.items():
            if name not in self or not self[name].layers:
                return None
            knob = self[name]
            per_layer = dict(value) if isinstance(value, Mapping) else {f: value for f in knob.layers}
            if not isinstance(value, Mapping) and value not in knob.choices(knob.layers[0]):
                return None
            try:
                for fqn, v in per_layer.items():
                    knob.check(v, knob.name(fqn))
            except ValueError:
                return None
            overrides[name] = {knob.name(f): v for f, v in per_layer.items()}
        return self.with_values(**overrides)
