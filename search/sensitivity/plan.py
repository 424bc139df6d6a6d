"""What a search does with sensitivity: before its first trial, the table (measured once, cached per study) and
the anchors' baselines (``sensitivity.*``, ``anchors.*``); once the baselines have run, the guided start-up
configurations, aimed a little below each baseline's measured size and latency and spread over the rest of the
front (``guided.*``)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from objectives import Accuracy
from spaces import JointSpace, StudentSpace
from spaces._layers import targets

from .._checks import whole
from .guide import anchor_policies, guided_configs
from .sweep import Measurer, Sweep, cache_key, load_or_sweep


@dataclass
class Guidance:
    """The table and what came of it; empty when ``sensitivity.enabled`` is false."""

    table: pd.DataFrame | None = None
    seconds: float = 0.0  # the sweep's wall time (as recorded when the table was read back from the cache)
    cached: bool = False
    anchors: dict[str, dict[str, Any]] = field(default_factory=dict)
    configs: list[dict[str, Any]] = field(default_factory=list)
    space: Any = None  # the teacher's JointSpace the table covers
    weights: dict[str, int] = field(default_factory=dict)  # weights per layer


def _section(cfg: DictConfig, key: str) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.get(key) or {}, resolve=True)


def settings(cfg: DictConfig) -> tuple[Sweep | None, dict[str, Any], dict[str, Any]]:
    """(the sweep, or None when off; the anchors' settings; the guided start's), checked."""
    sens = _section(cfg, "sensitivity")
    enabled = sens.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"sensitivity.enabled must be true or false, got {enabled!r}")
    try:
        sweep = Sweep(**sens)
    except TypeError as exc:
        raise ValueError(f"sensitivity: {exc}; allowed keys: enabled, subset, latency, warmup, repeats") from exc
    anchors, guided = _section(cfg, "anchors"), _section(cfg, "guided")
    for key in ("n", "perturbed"):
        whole(f"guided.{key}", guided.get(key, 0), 0)
    for b in anchors.get("bits") or []:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8:
            raise ValueError(f"anchors.bits: {b!r} is not a bit-width in 1..8")
    for m in anchors.get("macs") or []:
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < 1:
            raise ValueError(f"anchors.macs: {m!r} is not a fraction in (0, 1)")
    return (sweep if enabled else None), anchors, guided


def guidance(cfg: DictConfig, prepared: Any, out_dir: Path, *, log: Callable[[str], None] = print) -> Guidance:
    """Measure (or read back) the table, then derive the anchors and the guided configurations from it."""
    sweep, anchor_cfg, guided_cfg = settings(cfg)
    if sweep is None:
        return Guidance()
    s = prepared.setup
    space: JointSpace = s.space.teacher if isinstance(s.space, StudentSpace) else s.space
    teacher, splits = prepared.teacher, s.splits
    measurer = Measurer(teacher=teacher, space=space, calibration=prepared.pipeline.calibration,
                        accuracy=Accuracy(images=splits.val_x[: sweep.subset], labels=splits.val_y[: sweep.subset]),
                        input_shape=splits.input_shape, cost_model=s.cost_model, sweep=sweep)
    key = cache_key(teacher=teacher, data=f"{cfg.data.name}/{cfg.data.val_size}/{cfg.data.seed}",
                    space_cfg=OmegaConf.to_container(cfg.space, resolve=True), sweep=sweep, cost_model=s.cost_model)
    table, seconds, cached = load_or_sweep(measurer, out_dir=out_dir, key=key, log=log)
    out = Guidance(table, seconds, cached)
    identity = table[table["identity"].astype(bool)].iloc[0]
    layers = list(dict.fromkeys(f for k in space.knobs for f in k.layers))
    weights = {f: targets(teacher, f)[0][1].weight.numel() for f in layers}
    if anchor_cfg.get("enabled", True):
        out.anchors = anchor_policies(table, space, weights=weights, base_macs=int(identity["macs"]),
                                      bits=anchor_cfg.get("bits") or (), macs=anchor_cfg.get("macs") or (), log=log)
    out.space, out.weights = space, weights
    log(f"sensitivity: {len(out.anchors)} anchor baseline(s) ({', '.join(out.anchors) or 'none'})")
    return out


SIZE_MARGIN, LATENCY_MARGIN = 0.95, 0.93  # the guided start aims under a baseline's size and latency by these
# factors: predicted sizes are within a few percent, latencies drift by about 8% between two timings of one model


def guided(cfg: DictConfig, g: Guidance, df: pd.DataFrame, *, log: Callable[[str], None] = print,
           size_of: Callable[[dict[str, Any]], float] | None = None) -> list[dict]:
    """The guided start-up configurations (``g.configs`` too), from the table and the baselines' recorded values
    in the trials frame ``df`` (their size and latency as fractions of the uncompressed baseline's); ``size_of``:
    params -> exact packed bytes, to correct the table's size predictions (``guide.guided_configs``)."""
    _, _, guided_cfg = settings(cfg)
    n, perturbed = int(guided_cfg.get("n", 0)), int(guided_cfg.get("perturbed", 0))
    if g.table is None or not n:
        return []
    identity = g.table[g.table["identity"].astype(bool)].iloc[0]
    done = df[(df["state"] == "COMPLETE") & (df["baseline"] != "")]
    targets = []
    base = done[done["baseline"] == "uncompressed"]
    if len(base) and {"size_bytes", "latency_ms"} <= set(df.columns):
        size0, ms0 = float(base["size_bytes"].iloc[0]), float(base["latency_ms"].iloc[0])
        for _, b in done[done["baseline"] != "uncompressed"].iterrows():
            targets.append((SIZE_MARGIN * b["size_bytes"] / size0, LATENCY_MARGIN * b["latency_ms"] / ms0))
    # the budgets under most other baselines first: a start-up that fits only a few trials in its time tries first
    # the configurations that, if they keep their accuracy, dominate the most baselines at once
    targets = sorted(targets, key=lambda t: -sum(t[0] <= u[0] and t[1] <= u[1] for u in targets))
    base_ms = float(identity["latency_ms"]) if pd.notna(identity["latency_ms"]) else float("nan")
    g.configs = guided_configs(g.table, g.space, layer_bytes={f: 4.0 * w for f, w in g.weights.items()},
                               base_bytes=float(identity["bytes"]), base_ms=base_ms, n=n, perturbed=perturbed,
                               seed=int(cfg.study.seed), targets=targets, size_of=size_of)
    log(f"guided start: {len(g.configs)} configuration(s) from the sensitivity table, {len(targets)} budget(s) aimed "
        "below the baselines")
    return g.configs
