"""Per-layer sensitivity: every knob, every layer it covers, every choice, one layer changed alone.

Each entry is the trained model with that one change (``space.apply``: structure, BN folding, quantization),
calibrated, **not** fine-tuned, scored on a fixed subset of the validation split (its first ``subset`` images);
what it saves is measured exactly where it can be: the packed bytes (``spaces.packing``), the MACs of the plain
model, and the latency from the study's cost model: a prediction where the cost model predicts (``lut``,
``analytic``), otherwise a measured delta, timed interleaved with the unchanged model in the same call
(``measure_many``) with a short protocol, and only for entries that change the graph the runtime executes
(pruned channels, factorized layers, layers moved to int8 kernels); an entry that only changes stored values
(sparsity, weights kept in float kernels) has the unchanged model's latency.

A knob whose choices act only together with another knob's (``abits`` needs ``bits`` <= 8 on the layer) is swept
in that context (``BaseKnob.sweep_context``), and its entry is measured against the context alone.

The table is cached in ``results/<study>/sensitivity.csv`` with the key of what it depends on (teacher weights,
data split, space, sweep settings, cost model) in ``sensitivity.json``: a resumed or repeated study reads it back.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from objectives import Accuracy, count_macs
from objectives.hardware import BaseCostModel
from spaces import BaseKnob, JointSpace, Phase, calibrate, layers_of, materialize, to_plain
from spaces.materialize import packed_tensors
from spaces.packing import pack

from .._checks import whole
from ..results.outputs import atomic_write, write_json

COLUMNS = ["knob", "layer", "choice", "identity", "accuracy", "loss", "bytes", "bytes_saved", "latency_ms",
           "ms_saved", "macs", "macs_saved", "measured"]


@dataclass(frozen=True)
class Sweep:
    """The sweep's settings (``sensitivity.*`` in the config)."""

    subset: int = 500  # validation images each entry is scored on (the first of the fixed split)
    latency: bool = True  # measure latency deltas (False: every entry gets the unchanged model's latency)
    warmup: int = 3  # the short timing protocol of a measured delta (a predictor ignores it)
    repeats: int = 20

    def __post_init__(self) -> None:
        for key in ("subset", "repeats"):
            whole(f"sensitivity.{key}", getattr(self, key), 1)
        whole("sensitivity.warmup", self.warmup, 0)
        if not isinstance(self.latency, bool):
            raise ValueError(f"sensitivity.latency must be true or false, got {self.latency!r}")


def entries(space: JointSpace) -> Iterator[tuple[BaseKnob, str, Any, dict[str, Any], dict[str, Any]]]:
    """(knob, layer, choice, params, context params) for every entry of the sweep, identity choices included."""
    for knob in space.knobs:
        for fqn in knob.layers:
            context = {}
            for other, value in knob.sweep_context.items():
                if other in space and fqn in space[other].layers:
                    context[space[other].name(fqn)] = value
            base = space.with_values(context=context) if context else space.identity()
            for choice in knob.choices(fqn):
                yield knob, fqn, choice, space.with_values(context=context, knob={knob.name(fqn): choice}), base


def _graph_changes(knob: BaseKnob) -> bool:
    """Whether a choice of ``knob`` can change the graph the runtime runs (shapes, layers, int8 kernels)."""
    return knob.phase in (Phase.PRUNE, Phase.FACTORIZE, Phase.ACTIVATIONS)


class Measurer:
    """What one entry costs: the built model's accuracy on the subset, bytes, MACs and (where asked) latency."""

    def __init__(self, *, teacher: nn.Module, space: JointSpace, accuracy: Accuracy, calibration: torch.Tensor,
                 input_shape: tuple[int, ...], cost_model: BaseCostModel, sweep: Sweep) -> None:
        self.teacher, self.space, self.accuracy, self.sweep = teacher, space, accuracy, sweep
        self.calibration, self.input_shape = calibration, tuple(input_shape)
        self.cost_model = cost_model if not cost_model.measures else cost_model.quick(
            warmup=sweep.warmup, repeats=sweep.repeats)
        self._bases: dict[str, dict[str, Any]] = {}

    def build(self, params: dict[str, Any]) -> nn.Module:
        torch.manual_seed(0)
        model = self.space.apply(self.teacher, params)
        calibrate(model, self.calibration.split(128))
        return model.eval()

    def costs(self, params: dict[str, Any], *, timed: bool, base: dict[str, Any] | None = None) -> dict[str, Any]:
        model = self.build(params)
        out = {"accuracy": self.accuracy.of(model), "bytes": len(pack(packed_tensors(model))),
               "macs": count_macs(to_plain(model), self.input_shape), "latency_ms": float("nan"), "measured": False}
        if timed:
            artifact = materialize(model, input_shape=self.input_shape, calibration=self.calibration.numpy())
            if self.cost_model.measures and base is not None:
                both = self.cost_model.measure_many([base["artifact"], artifact])
                out["latency_ms"] = base["latency_ms"] + both[1].value_ms - both[0].value_ms
            else:
                out["latency_ms"] = self.cost_model.latency_ms(artifact).value_ms
            out["measured"], out["artifact"] = True, artifact
        return out

    def weights(self, params: dict[str, Any]) -> dict[str, int]:
        """{layer: weights} of the model shaped by ``params``' pruning and factorization (the teacher's layer
        names; a factorized layer's factors summed)."""
        model = self.space.apply_structure(self.teacher, params)
        return {f: sum(m.weight.numel() for _, m in layers_of(model, f))
                for f in dict.fromkeys(f for k in self.space.knobs for f in k.layers)}

    def latency_fraction(self, params: dict[str, Any]) -> float:
        """The latency of ``params`` applied to the model (structure and kernels; its weights do not matter) as a
        fraction of the unchanged model's, timed interleaved with it (or both predicted)."""
        base = self.base(self.space.identity())
        artifact = materialize(self.build(params), input_shape=self.input_shape, calibration=self.calibration.numpy())
        if "artifact" not in base:
            base["artifact"] = materialize(self.build(self.space.identity()), input_shape=self.input_shape,
                                           calibration=self.calibration.numpy())
        if self.cost_model.measures:
            both = self.cost_model.measure_many([base["artifact"], artifact])
        else:
            both = [self.cost_model.latency_ms(a) for a in (base["artifact"], artifact)]
        return both[1].value_ms / both[0].value_ms

    def base(self, params: dict[str, Any]) -> dict[str, Any]:
        """The unchanged model (or the context an entry is measured against): built, scored and timed once."""
        key = json.dumps(params, sort_keys=True, default=str)
        if key not in self._bases:
            self._bases[key] = self.costs(params, timed=self.sweep.latency)
        return self._bases[key]


def sweep_table(measurer: Measurer, *, log=print) -> pd.DataFrame:
    """The table (``COLUMNS``), one row per entry, identity rows holding the unchanged model's (or context's)
    figures and zero savings."""
    rows = []
    todo = list(entries(measurer.space))
    start = time.perf_counter()
    for knob, fqn, choice, params, context in tqdm(todo, desc="sensitivity", unit="entry", mininterval=1):
        base = measurer.base(context)
        if choice == knob.identity_value:
            got = {k: base[k] for k in ("accuracy", "bytes", "macs", "latency_ms")} | {"measured": base["measured"]}
        else:
            timed = measurer.sweep.latency and _graph_changes(knob)
            got = measurer.costs(params, timed=timed, base=base)
            if not timed:
                got["latency_ms"] = base["latency_ms"]
        rows.append({
            "knob": knob.knob, "layer": fqn, "choice": choice, "identity": choice == knob.identity_value,
            "accuracy": got["accuracy"], "loss": base["accuracy"] - got["accuracy"], "bytes": got["bytes"],
            "bytes_saved": base["bytes"] - got["bytes"], "latency_ms": got["latency_ms"],
            "ms_saved": base["latency_ms"] - got["latency_ms"] if got["measured"] else 0.0, "macs": got["macs"],
            "macs_saved": base["macs"] - got["macs"], "measured": bool(got["measured"]),
        })
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["seconds"] = round(time.perf_counter() - start, 2)
    log(f"sensitivity: {len(table)} entries in {table.attrs['seconds']:.1f} s")
    return table


def cache_key(*, teacher: nn.Module, data: str, space_cfg: Any, sweep: Sweep, cost_model: BaseCostModel) -> str:
    """What the table depends on, hashed: the teacher's weights, the data split, the space, the settings, the
    cost model (and device); not the cost model's ``neighbours`` (the host lock decides when it times, not how)."""
    h = hashlib.sha256()
    for tensor in teacher.state_dict().values():
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    described = {k: v for k, v in cost_model.describe().items() if k != "neighbours"}
    h.update(json.dumps([data, space_cfg, asdict(sweep), described], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def load_or_sweep(measurer: Measurer, *, out_dir: Path, key: str, log=print) -> tuple[pd.DataFrame, float, bool]:
    """(the table, seconds it took when swept, True if read back from ``out_dir``)."""
    csv, meta = out_dir / "sensitivity.csv", out_dir / "sensitivity.json"
    if csv.is_file() and meta.is_file():
        recorded = json.loads(meta.read_text())
        if recorded.get("key") == key:
            log(f"sensitivity: read back from {csv} (same teacher, data, space and cost model)")
            return pd.read_csv(csv), float(recorded.get("seconds", 0.0)), True
    table = sweep_table(measurer, log=log)
    atomic_write(csv, table.to_csv(index=False))
    write_json(meta, {"key": key, "seconds": table.attrs["seconds"], "entries": len(table)})
    return table, float(table.attrs["seconds"]), False
