"""Which layers each knob can change on a given model, found once, before any trial runs.

A knob matches layers by name and type; whether it can change one depends on the graph around it (a grouped
convolution fed by a concatenation defeats Torch-Pruning's channel groups; a pruned stem can leave a later layer
with inputs it cannot take). ``probe`` applies each knob alone on each of its layers, at its hardest and its mildest
non-identity choice, on a copy of the model, and runs what every trial runs after it: a forward pass (the output
shape must not change) and the export to the artifact the objectives measure (``materialize``: packed weights and
the ONNX model, quantized where the choice quantizes). A layer where any of that raises is left out of that knob
(``without``), with the reason, so that no trial fails for a reason known at start-up.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._base import BaseKnob
from ._compressed import calibrate
from .joint import JointSpace
from .materialize import materialize

_SEEN: dict[str, dict[str, dict[str, str]]] = {}  # probe results by model structure and space, in this process


def extremes(knob: BaseKnob, fqn: str) -> list[Any]:
    """The knob's hardest and mildest choices on ``fqn`` other than its identity (hardest first)."""
    choices = [c for c in knob.choices(fqn) if c != knob.identity_value]
    if not choices:
        return []
    ordered = sorted(choices, key=float, reverse=knob.harder == "high")
    return list(dict.fromkeys([ordered[0], ordered[-1]]))


def _why(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:160] if lines else ''}".rstrip(": ")


def _context(space: JointSpace, knob: BaseKnob, fqn: str) -> dict[str, dict[str, Any]]:
    """What a choice of ``knob`` on ``fqn`` needs from other knobs to act (its ``sweep_context``)."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in knob.sweep_context.items():
        if name in space and fqn in space[name].layers:
            out[name] = {space[name].name(fqn): value}
    return out


def probe(space: JointSpace, model: nn.Module, input_shape: Sequence[int],
          cache: str | Path | None = None) -> dict[str, dict[str, str]]:
    """{knob: {layer: why}} of the layers where the knob, alone, breaks ``model`` (see the module docstring).

    Found once per model structure and space in a process, and, with ``cache`` (a folder), read from
    ``<cache>/<key>.json`` where an earlier process kept it (``keep``: a search, its pick and its report each start
    a process, and the probe takes seconds)."""
    key = repr((str(model), tuple(input_shape), [(k.knob, type(k).__qualname__, getattr(k.apply_, "__qualname__", ""),
                                                   k.layers, [k.choices(f) for f in k.layers])
                                                   for k in space.knobs]))
    if key in _SEEN:
        return _SEEN[key]
    stored = Path(cache) / _file(key) if cache is not None else None
    if stored is not None and stored.is_file():
        _SEEN[key] = json.loads(stored.read_text())
        return _SEEN[key]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*input_shape, generator=generator)
    calibration = torch.randn(8, *tuple(input_shape)[1:], generator=generator)
    was_training = model.training
    with torch.no_grad():
        expected = tuple(model.eval()(x).shape)
    broken: dict[str, dict[str, str]] = {}
    with torch.random.fork_rng():  # pruning traces and building draw random numbers: the caller's stream stays
        for knob in space.knobs:
            for fqn in knob.layers:
                for value in extremes(knob, fqn):
                    params = space.with_values(**{knob.knob: {knob.name(fqn): value}}, **_context(space, knob, fqn))
                    try:
                        built = space.apply(model, params).eval()
                        calibrate(built, [calibration])
                        with torch.no_grad():
                            shape = tuple(built(x).shape)
                        if shape != expected:
                            raise ValueError(f"the output is {shape} instead of {expected}")
                        materialize(built, input_shape=input_shape, calibration=calibration.numpy())
                    except Exception as exc:  # noqa: BLE001 - whatever breaks, the layer is left out and said why
                        broken.setdefault(knob.knob, {})[fqn] = f"{knob.name(fqn)}={value}: {_why(exc)}"
                        break
    model.train(was_training)
    _SEEN[key] = broken
    return broken


def _file(key: str) -> str:
    return f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def keep(cache: str | Path) -> None:
    """Write what this process probed into the folder ``cache`` for later processes (``probe(cache=)``): called once
    a run's config is checked, so that a refused run writes nothing. Each file whole or not at all (a concurrent
    worker may read it)."""
    for key, broken in _SEEN.items():
        stored = Path(cache) / _file(key)
        if stored.is_file():
            continue
        stored.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=stored.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(broken, f)
        os.replace(tmp, stored)


def without(space: JointSpace, broken: Mapping[str, Mapping[str, str]]) -> JointSpace:
    """``space`` with each knob's ``broken`` layers left out (the knobs changed in place, a new joint space)."""
    if not broken:
        return space
    for knob in space.knobs:
        gone = broken.get(knob.knob, {})
        knob.layers = [f for f in knob.layers if f not in gone]
        knob.left_out = {**knob.left_out, **{f: f"it breaks the model: {why}" for f, why in gone.items()}}
    return JointSpace(space.knobs)


def said(space: JointSpace, limit: int = 3) -> list[str]:
    """One line per knob that leaves matched layers out (``BaseKnob.left_out``): which, and why (the first
    ``limit``)."""
    lines = []
    for knob in space.knobs:
        if not knob.left_out:
            continue
        items = list(knob.left_out.items())
        shown = "; ".join(f"{f} ({why})" for f, why in items[:limit])
        more = f"; and {len(items) - limit} more" if len(items) > limit else ""
        lines.append(f"space.knobs.{knob.knob}: {len(knob.layers)} layer(s), {len(items)} left out: {shown}{more}")
    return lines


__all__ = ["probe", "without", "said", "extremes"]
