"""Structured pruning: whole output channels (conv) or neurons (linear) physically removed.

Torch-Pruning's DependencyGraph finds every layer coupled to a channel (the next layer's input,
a residual add's other branch) and removes the channel from all of them at once, so the result
is a smaller dense model that runs faster in any runtime. Where it cannot trace a model whole or
follows a channel shuffle wrongly, ``_groups`` finds the groups it prunes correctly and says why
it leaves the others out.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
import torch
import torch_pruning as tp
from torch import nn

from .._base import BaseKnob, Phase
from .._layers import example_input, single_thread
from ._groups import channel_groups, group_split, inputs, kept_least, scope_graph

__all__ = ["ChannelKnob", "PRUNED"]

PRUNED = "pruned_channels"  # attribute of a pruned model: {group root fqn: the channel indices removed}. Which
# channels go depends on the weights pruned (lowest L2 norm first); a bundle stores it, and a model that holds it
# before pruning (``search.pick.bundle.load_model``: the architecture rebuilt on untrained weights) removes exactly
# those channels again instead of ranking its own


def prune_channels_(model: nn.Module, ratios: Mapping[str, float], input_shape: Sequence[int],
                    dtype: str = "float32", importance: Callable[[Any], torch.Tensor] | None = None) -> None:
    """Remove ``ratios[fqn]`` of each group's channels from ``model`` in place (lowest L2 norm first, or lowest
    ``importance``: a Torch-Pruning importance, a callable from a group to a score per channel; or the ones
    ``model``'s ``PRUNED`` attribute names); the indices removed are left in that attribute. Each group is pruned
    through the graph of the module that holds it (``_groups``: the model's, or a block's where Torch-Pruning cannot
    trace the model whole)."""
    model.eval()
    if not any(r > 0 for r in ratios.values()):
        return
    with single_thread():  # traces of one input: a second thread costs more than it saves
        setattr(model, PRUNED, _pruned(model, ratios, input_shape, dict(getattr(model, PRUNED, None) or {}), dtype,
                                       importance))


def _pruned(model: nn.Module, ratios: Mapping[str, float], input_shape: Sequence[int],
            given: Mapping[str, list[int]], dtype: str = "float32",
            importance: Callable[[Any], torch.Tensor] | None = None) -> dict[str, list[int]]:
    importance = importance or tp.importance.MagnitudeImportance(p=2)
    found = channel_groups(model, input_shape, dtype)
    todo = {scope: (cuts, [r for r in roots if ratios.get(r, 0.0) > 0])
            for scope, (cuts, roots) in found.scopes.items()}
    todo = {scope: work for scope, work in todo.items() if work[1]}
    # each module's input before any is pruned: a group kept stays inside its module, so no input changes
    scopes = [s for s in todo if s]
    args = inputs(model, input_shape, scopes, dtype) if scopes else {"": (example_input(input_shape, dtype=dtype),)}
    removed: dict[str, list[int]] = {}
    for scope, (cuts, roots) in todo.items():
        graph, groups = scope_graph(model, scope, args[scope], cuts, roots)
        for fqn in roots:
            group, ratio = groups[fqn], ratios[fqn]
            scores = importance(group)
            channels, split = len(scores), group_split(graph, group)
            size = channels // split  # a grouped conv's channels: ``split`` groups of ``size``, cut alike
            n_prune = min(int(ratio * size), size - kept_least(split)) * split
            if n_prune <= 0:
                continue
            if fqn in given:
                idxs = [int(i) for i in given[fqn]]
                if len(idxs) != n_prune or not all(0 <= i < channels for i in idxs):
                    raise ValueError(f"channels.{fqn}: the stored structure removes {len(idxs)} of {channels} "
                                     f"channels where ratio {ratio} removes {n_prune}")
            else:  # the same offsets in every group, lowest mean L2 norm first (as Torch-Pruning's MetaPruner)
                offsets = torch.argsort(scores.view(split, size).mean(0))[:n_prune // split]
                idxs = sorted(int(o) + size * g for g in range(split) for o in offsets)
            graph.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, idxs).prune()
            removed[fqn] = idxs
    return removed


class ChannelKnob(BaseKnob):
    """Per-group ratio of output channels removed: ``channels.<root fqn>`` in [low, high] by ``step``."""

    knob = "channels"
    phase = Phase.PRUNE
    label = "channels removed"
    short = "channels cut"
    harder = "high"
    technique = "lost output channels (Torch-Pruning groups, lowest L2 norm first)"

    def __init__(
        self, *, model: nn.Module, input_shape: Sequence[int], input_dtype: str = "float32", low: float = 0.0,
        high: float = 0.75, step: float = 0.125, include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
    ) -> None:
        if not 0.0 <= low <= high < 1.0:
            raise ValueError(f"space.knobs.channels: need 0 <= low <= high < 1, got {low=}, {high=}")
        if step <= 0:
            raise ValueError(f"space.knobs.channels.step must be > 0, got {step=}")
        self.low, self.high, self.step = float(low), float(high), float(step)
        self.input_shape, self.input_dtype = tuple(input_shape), input_dtype
        super().__init__(model=model, include=include, exclude=exclude)
        # the layers rooting a group that failed its check, with the reason (``_groups``)
        why = channel_groups(model, self.input_shape, input_dtype).left_out
        self.left_out.update({fqn: why[fqn] for fqn in self.left_out if fqn in why})

    ineligible = "not the root of a channel group Torch-Pruning can prune (the output layer, or channels coupled " \
        "to another layer's)"

    def eligible(self, model: nn.Module, layers: list[str]) -> list[str]:
        roots = set(channel_groups(model, self.input_shape, self.input_dtype).roots)
        return [fqn for fqn in layers if fqn in roots]

    @property
    def identity_value(self) -> float:
        return 0.0

    def choices(self, fqn: str) -> tuple[float, ...]:
        n = int(round((self.high - self.low) / self.step))
        return tuple(round(self.low + i * self.step, 10) for i in range(n + 1))

    def suggest(self, trial: optuna.Trial, fqn: str) -> float:
        return trial.suggest_float(self.name(fqn), self.low, self.high, step=self.step)

    def check(self, value: Any, key: str) -> None:
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{key}: channel ratio must be in [0, 1), got {value!r}")

    def apply_(self, model: nn.Module, values: Mapping[str, float]) -> None:
        prune_channels_(model, values, self.input_shape, self.input_dtype)

    def baselines(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        return {"channels_50": {"channels": 0.5}, "channels_50_int8": {"channels": 0.5, "bits": 8, "abits": 8}}

    def describe(self, reference: nn.Module, built: nn.Module) -> str:
        layers = [m for m in built.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        out_now = layers[-1].weight.shape[0] if layers else getattr(built, "out_features", reference.weight.shape[0])
        out_then = reference.weight.shape[0]
        return f"{1 - out_now / out_then:.0%}" if out_now != out_then else ""
