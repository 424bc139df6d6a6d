"""Which layers each knob can change on a given model, found once, before any trial runs.

A knob matches layers by name and type; whether it can change one depends on the graph around it (a grouped
convolution fed by a concatenation defeats Torch-Pruning's channel groups; a pruned stem can leave a later layer
with inputs it cannot take) and on what the knobs before it made of the layer (a layer factorized into two, or
with fewer channels). ``probe`` applies each knob alone on each of its layers, at its hardest and its mildest
non-identity choice, on a copy of the model, then at its hardest on all its layers at once (layer by layer only where
that breaks), then each knob at its hardest again after the structural knobs of the phases before it (pruning,
factorization, sparsity) at theirs; and runs what every trial runs after it: a forward pass (the output shape must not
change), the export to the artifact the objectives measure (``materialize``: packed weights and the ONNX model,
quantized where the choice quantizes) and a forward pass in training mode. A layer where any of that raises is left out of
that knob (``without``), with the reason, so that no trial fails for a reason known at start-up.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from ._base import BaseKnob, Phase
from ._compressed import calibrate
from ._layers import example_input, one_line, single_thread
from .joint import JointSpace
from .materialize import materialize

_SEEN: dict[str, dict[str, dict[str, str]]] = {}  # probe results by model structure and space, in this process
# what the probe tries, in its cache key: a result kept by a probe that tried less is not read back
_TRIES = "alone, then after the structural knobs before it"


def extremes(knob: BaseKnob, fqn: str) -> list[Any]:
    """The knob's hardest and mildest choices on ``fqn`` other than its identity (hardest first)."""
    choices = [c for c in knob.choices(fqn) if c != knob.identity_value]
    if not choices:
        return []
    ordered = sorted(choices, key=float, reverse=knob.harder == "high")
    return list(dict.fromkeys([ordered[0], ordered[-1]]))


def _params(space: JointSpace, knob: BaseKnob, values: Mapping[str, Any]) -> dict[str, Any]:
    """``knob``'s ``values`` ({fqn: value}) as parameters, with what each needs from other knobs to act (its
    ``sweep_context``)."""
    out = {knob.name(fqn): value for fqn, value in values.items()}
    for name, value in knob.sweep_context.items():
        if name in space:
            out.update({space[name].name(fqn): value for fqn in values if fqn in space[name].layers})
    return out


@contextmanager
def _naming(what: str) -> Iterator[None]:
    """An exception the probe does not expect (a knob whose choices cannot be listed or ordered, a model whose own
    forward pass fails) as one line naming what it was doing: ``probe: space.knobs.bits: layer 'fc1': its choices:
    TypeError: ...``, a ValueError (``search.cli`` prints it, exit status 2). What breaks a layer is no error: the
    layer is left out (``_alone``, ``_after``)."""
    try:
        yield
    except Exception as exc:
        raise ValueError(f"probe: {what}: {one_line(exc)}") from exc


def _extremes(knob: BaseKnob, fqn: str) -> list[Any]:
    with _naming(f"space.knobs.{knob.knob}: layer {fqn!r}: its choices"):
        return extremes(knob, fqn)


def _hardest(knob: BaseKnob, layers: Sequence[str]) -> dict[str, Any]:
    """{fqn: the knob's hardest choice} on those of ``layers`` where it has one."""
    return {f: choices[0] for f in layers if (choices := _extremes(knob, f))}


def _before(space: JointSpace, knob: BaseKnob, broken: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """The structural knobs (pruning, factorization, sparsity) that act before ``knob``, each at its hardest on its
    layers but those ``broken``, as parameters: one set per alternative where a phase has several knobs (``rank``
    or ``tucker``)."""
    phases: dict[Phase, list[BaseKnob]] = {}
    for k in space.knobs:
        if not k.phase.folded and k.phase < knob.phase:
            phases.setdefault(k.phase, []).append(k)
    sets = []
    for i in range(max(map(len, phases.values()), default=0)):
        params: dict[str, Any] = {}
        for alternatives in phases.values():
            k = alternatives[i % len(alternatives)]
            params.update(_params(space, k, _hardest(k, [f for f in k.layers if f not in broken[k.knob]])))
        if params:
            sets.append(params)
    return sets


def _runs(space: JointSpace, model: nn.Module, input_shape: Sequence[int], x: torch.Tensor,
          calibration: torch.Tensor, expected: tuple[int, ...], params: Mapping[str, Any]) -> None:
    """What a trial does with ``params``: build, calibrate, a forward pass of the model's output shape, export, and a
    forward pass in training mode, as the recovery's fine-tune makes (torchvision GoogLeNet's auxiliary heads run only
    there: pruning the channels they read broke every trial's recovery while the eval-mode pass went through)."""
    built = space.apply(model, params).eval()
    calibrate(built, [calibration])
    with torch.no_grad():
        shape = tuple(built(x).shape)
    if shape != expected:
        raise ValueError(f"the output is {shape} instead of {expected}")
    materialize(built, input_shape=input_shape, calibration=calibration.numpy())
    try:
        with torch.no_grad():
            built.train()(calibration[:2])  # two samples: BatchNorm in training mode needs more than one value
    except Exception as exc:  # noqa: BLE001 - said as what it is: the model breaks where it is fine-tuned
        raise RuntimeError(f"in training mode (the recovery's fine-tune): {one_line(exc)}") from exc


def _alone(space: JointSpace, knob: BaseKnob, runs: Callable[[dict[str, Any]], None]) -> dict[str, str]:
    """{layer: why} where ``knob`` alone, on that layer alone, breaks the model."""
    broken = {}
    for fqn in knob.layers:
        for value in _extremes(knob, fqn):
            try:
                runs(space.with_values(probed=_params(space, knob, {fqn: value})))
            except Exception as exc:  # noqa: BLE001 - whatever breaks, the layer is left out and said why
                broken[fqn] = f"{knob.name(fqn)}={value}: {one_line(exc)}"
                break
    return broken


def _together(space: JointSpace, knob: BaseKnob, layers: Sequence[str],
              runs: Callable[[dict[str, Any]], None]) -> dict[str, str]:
    """{layer: why} where ``knob`` at its hardest on ``layers`` at once breaks the model though each alone did not:
    one run, and only where that breaks, the layers added one by one, each left out where it breaks the model with
    those kept before it (layers that clash only when pruned together)."""
    values = _hardest(knob, layers)
    if len(values) < 2:
        return {}
    try:
        runs(space.with_values(probed=_params(space, knob, values)))
        return {}
    except Exception:  # noqa: BLE001 - which layers clash is found below
        pass
    kept: dict[str, Any] = {}
    broken = {}
    for fqn, value in values.items():
        try:
            runs(space.with_values(probed=_params(space, knob, {**kept, fqn: value})))
            kept[fqn] = value
        except Exception as exc:  # noqa: BLE001 - whatever breaks, the layer is left out and said why
            broken[fqn] = (f"{knob.name(fqn)}={value} with the {len(kept)} layer(s) before it kept at their "
                           f"hardest: {one_line(exc)}")
    return broken


def _after(space: JointSpace, knob: BaseKnob, before: dict[str, Any], layers: Sequence[str],
           runs: Callable[[dict[str, Any]], None]) -> dict[str, str]:
    """{layer: why} where ``knob`` at its hardest breaks the model after ``before`` (``_before``): tried on all
    ``layers`` at once, and layer by layer only where that breaks (seldom; so the probe stays cheap)."""
    values = _hardest(knob, layers)
    if not values:
        return {}
    try:
        runs(space.with_values(before=before, probed=_params(space, knob, values)))
        return {}
    except Exception:  # noqa: BLE001 - which layer broke it, and whether this knob did, is found below
        pass
    try:
        runs(space.with_values(before=before))
    except Exception:  # noqa: BLE001 - the knobs before it break the model by themselves: not this knob's doing
        return {}
    after = ", ".join(dict.fromkeys(name.partition(".")[0] for name in before))
    broken = {}
    for fqn, value in values.items():
        try:
            runs(space.with_values(before=before, probed=_params(space, knob, {fqn: value})))
        except Exception as exc:  # noqa: BLE001 - whatever breaks, the layer is left out and said why
            broken[fqn] = f"{knob.name(fqn)}={value} after {after} at their hardest: {one_line(exc)}"
    return broken


def probe(space: JointSpace, model: nn.Module, input_shape: Sequence[int],
          cache: str | Path | None = None, input_dtype: str = "float32") -> dict[str, dict[str, str]]:
    """{knob: {layer: why}} of the layers where the knob breaks ``model``, alone or after the structural knobs
    before it (see the module docstring).

    Found once per model structure and space in a process, and, with ``cache`` (a folder), read from
    ``<cache>/<key>.json`` where an earlier process kept it (``keep``: a search, its pick and its report each start
    a process, and the probe takes seconds). ``input_dtype``: int64 for token ids (``spaces._layers.example_input``)."""
    key = _key(space, model, input_shape) + ("" if input_dtype == "float32" else input_dtype)
    if key in _SEEN:
        return _SEEN[key]
    stored = Path(cache) / _file(key) if cache is not None else None
    if stored is not None and stored.is_file():
        _SEEN[key] = json.loads(stored.read_text())
        return _SEEN[key]
    generator = torch.Generator().manual_seed(0)
    x = example_input(input_shape, generator, input_dtype)
    calibration = example_input((8, *tuple(input_shape)[1:]), generator, input_dtype)
    was_training = model.training
    try:
        with _naming(f"the model's forward pass on a random input of shape {tuple(input_shape)}"), torch.no_grad():
            expected = tuple(model.eval()(x).shape)
        runs = functools.partial(_runs, space, model, input_shape, x, calibration, expected)
        broken: dict[str, dict[str, str]] = {}
        # pruning traces and building draw random numbers: the caller's stream stays. One thread: every run is one
        # input (or eight), and a second thread cost more than it saved (ShuffleNetV2's channels: 30-34 s against
        # 16-21 s on 2 busy cores)
        with torch.random.fork_rng(), single_thread():
            for knob in space.knobs:
                broken[knob.knob] = _alone(space, knob, runs)
                layers = [f for f in knob.layers if f not in broken[knob.knob]]
                broken[knob.knob].update(_together(space, knob, layers, runs))
            for knob in space.knobs:
                for before in _before(space, knob, broken):
                    layers = [f for f in knob.layers if f not in broken[knob.knob]]
                    broken[knob.knob].update(_after(space, knob, before, layers, runs))
    finally:
        model.train(was_training)
    _SEEN[key] = {name: layers for name, layers in broken.items() if layers}
    return _SEEN[key]


def _key(space: JointSpace, model: nn.Module, input_shape: Sequence[int]) -> str:
    """What the probe's result depends on: the model's structure, the input shape, each knob's layers and choices."""
    knobs = []
    for k in space.knobs:
        choices = []
        for fqn in k.layers:
            with _naming(f"space.knobs.{k.knob}: layer {fqn!r}: its choices"):
                choices.append(k.choices(fqn))
        knobs.append((k.knob, type(k).__qualname__, getattr(k.apply_, "__qualname__", ""), k.layers, choices))
    return repr((_TRIES, _engine(), str(model), tuple(input_shape), knobs))


@functools.cache
def _engine() -> str:
    """The code the probe runs (this package's sources) and the libraries it exports with: a layer an older engine
    left out is probed again once the engine changes (torchvision AlexNet's every layer, left out for an ONNX export
    the engine has since learned, stayed left out from a cache keyed by the model alone)."""
    sources = sorted(Path(__file__).resolve().parent.rglob("*.py"))
    h = hashlib.sha256(f"{torch.__version__} {onnx.__version__}".encode())
    for path in sources:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


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
