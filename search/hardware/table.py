"""``python -m search.hardware build|validate [overrides]``: the latency lookup table of this machine.

``build`` profiles configurations of the space (the identity, the baselines, then random ones until
``lut.patience`` in a row bring no kernel the table lacks, at most ``lut.max_configs``): every kernel
ONNX Runtime runs for them is timed inside its model and entered under its signature. One
configuration in ``lut.calibrate_every`` is also measured whole by the CPU protocol; the table's
constant is the median of (measured - sum of entries) over those. The table goes to
``<hardware.table>/<device>/lut-b<batch>-t<threads>.json`` with this machine's fingerprint;
running ``build`` again extends it.

``validate`` draws ``lut.validate.n`` new random configurations, measures them with the CPU protocol
(interleaved), predicts them with each cost model in ``lut.validate.cost_models`` and writes
``results/costmodels/<device>/validation.csv`` (one row per configuration and cost model),
``validation.json`` (share within +-10%, MAPE, Spearman, cost of a prediction and of a
measurement, the machine's noise floor) and ``validation.html``/``.png`` (predicted vs measured).
"""
from __future__ import annotations

import importlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from objectives.hardware import BaseCostModel, LatencyTable, LutCostModel, OrtCpuCostModel, host_lock, _ort
from objectives.hardware.lut import device_slug, now, table_path
from spaces import Artifact, calibrate, materialize

from .._checks import whole, CONF
from ..loop.baselines import policies
from ..results.outputs import atomic_write, write_json
from ..app import Setup, setup
from ..report.plots import _png_bytes, find_chromium

log = logging.getLogger("search.hardware")



@dataclass(frozen=True)
class LutSettings:
    table: str
    device: str | None
    batch_size: int
    threads: int
    warmup: int
    repeats: int
    host_lock: bool | str = True

    @classmethod
    def from_cfg(cls, hw: DictConfig) -> "LutSettings":
        if not _names(hw.get("_target_"), LutCostModel):
            raise ValueError(f"hardware: python -m search.hardware needs hardware=lut, got {hw.get('_target_')!r}")
        return cls(str(hw.table), hw.get("device"), int(hw.batch_size), int(hw.threads), int(hw.warmup),
                   int(hw.repeats), hw.get("host_lock", True))


def _names(target: Any, cls: type) -> bool:
    """Whether ``target`` (a config's ``_target_``) names ``cls``, by any path it is importable by
    (``objectives.LutCostModel`` and ``objectives.hardware.LutCostModel`` alike)."""
    module, _, name = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None) is cls
    except (ImportError, ValueError):  # not importable: not this class
        return False


def _positive(cfg: DictConfig, key: str, minimum: int = 1) -> int:
    return whole(key, OmegaConf.select(cfg, key), minimum)


def measuring_setup(cfg: DictConfig) -> tuple[Setup, LutSettings]:
    """The checked setup with the CPU runtime in place of the table (which may not exist yet)."""
    lut = LutSettings.from_cfg(cfg.hardware)
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.hardware = OmegaConf.create({"_target_": "objectives.hardware.OrtCpuCostModel", "batch_size": lut.batch_size,
                                     "threads": lut.threads, "settle_s": 0.0, "host_lock": lut.host_lock})
    return setup(cfg), lut


def configurations(s: Setup, seed: int):
    """The identity, the baselines, then random configurations of the space, forever."""
    yield from policies(s.space, s.net).values()
    sampler = optuna.samplers.RandomSampler(seed=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler)
    while True:
        trial = study.ask()
        params = s.space.sample(trial)
        study.tell(trial, 0.0)
        yield params


def artifact_of(s: Setup, params: dict[str, Any], calibration: torch.Tensor) -> Artifact:
    """The artifact of ``params`` on the untrained network: latency depends on structure, not weights."""
    model = s.space.apply(s.net, params)
    calibrate(model, [calibration[:128]])
    return materialize(model.eval(), input_shape=s.splits.input_shape, calibration=calibration.numpy())


def build(cfg: DictConfig) -> Path:
    s, lut = measuring_setup(cfg)
    max_configs, patience = _positive(cfg, "lut.max_configs"), _positive(cfg, "lut.patience")
    every = _positive(cfg, "lut.calibrate_every")
    here = _ort.fingerprint(threads=lut.threads, batch_size=lut.batch_size)
    device = lut.device or device_slug(here["cpu"])
    path = table_path(lut.table, device, batch_size=lut.batch_size, threads=lut.threads)
    if path.is_file():
        table = LatencyTable.load(path)
        if table.fingerprint != here:
            raise ValueError(f"hardware.device: {path} was built on {table.fingerprint}; this machine is {here}. "
                             "Extend a table only on its own device")
    else:
        table = LatencyTable(here, meta={})
    calibration = s.splits.train_x[: max(64, int(cfg.calibration_samples))]
    cpu = OrtCpuCostModel(batch_size=lut.batch_size, threads=lut.threads, settle_s=0.0, warmup=5, repeats=20,
                          rounds=1, host_lock=lut.host_lock)
    started, since_new, wholes = time.time(), 0, []
    for i, params in enumerate(configurations(s, int(cfg.lut.seed))):
        if i >= max_configs or since_new >= patience:
            break
        artifact = artifact_of(s, params, calibration)
        batch = _ort.example_batch(artifact.example, artifact.input_shape, lut.batch_size)
        with host_lock(cpu.lock_path):  # the kernels are timed: not beside another worker's measurement
            profile = _ort.profile(_ort.optimized(artifact.onnx, threads=lut.threads), batch, threads=lut.threads,
                                   warmup=lut.warmup, repeats=lut.repeats)
        new = table.add(profile)
        since_new = 0 if new else since_new + 1
        if i % every == 0:
            wholes.append((cpu.latency_ms(artifact).value_ms, [k.key for k in profile.kernels]))
        if (i + 1) % 50 == 0:
            log.info(f"{i + 1} configurations, {len(table.entries)} kernels, {since_new} in a row with none new")
    residuals = np.array([m - sum(table.entries[k]["ms"] for k in keys) for m, keys in wholes])
    table.constant_ms = float(np.median(residuals))
    q1, q3 = np.percentile(residuals, [25, 75])
    table.meta.update({
        "built": now(), "configurations": int(table.meta.get("configurations", 0)) + i,
        "calibration_models": len(wholes), "residual_iqr_ms": float(q3 - q1), "space": cfg.space.name,
        "model": cfg.model.name, "saturated": bool(since_new >= patience), "build_s": round(time.time() - started, 1),
    })
    table.save(path)
    log.info(f"{path}: {len(table.entries)} kernels from {i} configurations in {time.time() - started:.0f} s "
             f"({'saturated' if since_new >= patience else 'stopped at lut.max_configs'}); "
             f"constant {table.constant_ms:.3f} ms from {len(wholes)} whole-model measurements")
    return path


def cost_model_named(name: str, cfg: DictConfig) -> BaseCostModel:
    """A cost model from ``conf/hardware/<name>.yaml`` (``lut`` means the one configured now)."""
    if name == "lut":
        return instantiate(cfg.hardware, _convert_="all")
    path = CONF / "hardware" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF / "hardware").glob("*.yaml"))
        raise ValueError(f"lut.validate.cost_models: no cost model {name!r}; choose from {known}")
    node = OmegaConf.load(path)
    if "results_dir" in str(OmegaConf.to_yaml(node)):
        node = OmegaConf.merge({"results_dir": cfg.results_dir}, node)
    return instantiate(node, _convert_="all")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


def figures(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    out = {}
    for name, g in df.groupby("cost_model", sort=False):
        rel = g["predicted_ms"] / g["measured_ms"] - 1
        out[name] = {
            "n": int(len(g)), "within_10pct": float((rel.abs() <= 0.10).mean()), "mape": float(rel.abs().mean()),
            "spearman": spearman(g["predicted_ms"].to_numpy(), g["measured_ms"].to_numpy()),
            "predict_s_median": float(g["predict_s"].median()), "kernels_filled": int(g["kernels_filled"].sum()),
        }
    return out


def noise_floor(readings: list[float]) -> float:
    """Share of repeated measurements of one configuration within +-10% of their median."""
    r = np.asarray(readings)
    return float((np.abs(r / np.median(r) - 1) <= 0.10).mean())


def validate(cfg: DictConfig) -> Path:
    s, lut = measuring_setup(cfg)
    n, noise_n = _positive(cfg, "lut.validate.n"), _positive(cfg, "lut.validate.noise_repeats", 2)
    names = list(cfg.lut.validate.cost_models)
    models = {name: cost_model_named(name, cfg) for name in names}
    device = lut.device or device_slug(_ort.fingerprint(threads=lut.threads, batch_size=lut.batch_size)["cpu"])
    out_dir = Path(cfg.results_dir) / "costmodels" / device
    calibration = s.splits.train_x[: max(64, int(cfg.calibration_samples))]
    gen = configurations(s, int(cfg.lut.validate.seed))
    for _ in policies(s.space, s.net):  # skip the baselines: the table has seen them
        next(gen)
    configs = [next(gen) for _ in range(n)]
    artifacts = [artifact_of(s, p, calibration) for p in configs]
    rows = []
    for name, model in models.items():
        for i, a in enumerate(artifacts):
            before = len(model.table.entries) if isinstance(model, LutCostModel) else 0
            start = time.perf_counter()
            value = model.latency_ms(a).value_ms
            took = time.perf_counter() - start
            filled = (len(model.table.entries) - before) if isinstance(model, LutCostModel) else 0
            rows.append({"cost_model": name, "config": i, "predicted_ms": value, "predict_s": took,
                         "kernels_filled": filled})
    cpu = OrtCpuCostModel(batch_size=lut.batch_size, threads=lut.threads,  # the search's protocol, settle included
                          host_lock=lut.host_lock)
    log.info(f"measuring {n} configurations (interleaved) and one of them {noise_n} times for the noise floor")
    timed = []
    for a in artifacts[:3]:  # the cost of one measurement as a search pays it
        start = time.perf_counter()
        cpu.latency_ms(a)
        timed.append(time.perf_counter() - start)
    chunks = np.array_split(np.arange(n), noise_n)
    measured: dict[int, Any] = {}
    noise = []
    for chunk in chunks:
        got = cpu.measure_many([artifacts[0], *(artifacts[i] for i in chunk)])
        noise.append(got[0].value_ms)
        measured.update(zip(chunk.tolist(), got[1:]))
    df = pd.DataFrame(rows)
    df["measured_ms"] = [measured[i].value_ms for i in df["config"]]
    df["measured_iqr_ms"] = [measured[i].spread_ms for i in df["config"]]
    df["rel_error"] = df["predicted_ms"] / df["measured_ms"] - 1
    df["within_10pct"] = df["rel_error"].abs() <= 0.10
    df["params"] = [json.dumps(configs[i], sort_keys=True) for i in df["config"]]
    summary = {
        "device": device, "fingerprint": _ort.fingerprint(threads=lut.threads, batch_size=lut.batch_size),
        "configurations": n, "space": cfg.space.name, "model": cfg.model.name, "seed": int(cfg.lut.validate.seed),
        "measured_by": cpu.describe(), "measure_s_median": float(np.median(timed)),
        "noise_floor": {"share_within_10pct": noise_floor(noise), "readings_ms": noise},
        "cost_models": figures(df), "described": {k: m.describe() for k, m in models.items()},
        "written": now(),
    }
    for name, f in summary["cost_models"].items():
        f["speedup_vs_measurement"] = summary["measure_s_median"] / max(f["predict_s_median"], 1e-9)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "validation.csv", df.to_csv(index=False))
    write_json(out_dir / "validation.json", summary)
    scatter(df, summary, out_dir, png=bool(cfg.png))
    log.info(report(summary))
    return out_dir


def report(summary: dict[str, Any]) -> str:
    floor = summary["noise_floor"]["share_within_10pct"]
    lines = [f"device {summary['device']}: {summary['configurations']} random configurations of space "
             f"{summary['space']!r}, one measurement {summary['measure_s_median']:.2f} s",
             f"noise floor: {floor:.0%} of {len(summary['noise_floor']['readings_ms'])} repeated measurements "
             "of one configuration within +-10% of their median",
             f"{'cost model':12}{'within 10%':>12}{'MAPE':>8}{'Spearman':>10}{'predict (s)':>13}{'speed-up':>10}"]
    for name, f in summary["cost_models"].items():
        lines.append(f"{name:12}{f['within_10pct']:>12.0%}{f['mape']:>8.1%}{f['spearman']:>10.3f}"
                     f"{f['predict_s_median']:>13.4f}{f['speedup_vs_measurement']:>9.0f}x")
    return "\n".join(lines)


def scatter(df: pd.DataFrame, summary: dict[str, Any], out_dir: Path, *, png: bool) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    lo, hi = float(df[["predicted_ms", "measured_ms"]].min().min()) * 0.8, float(df[["predicted_ms", "measured_ms"]].max().max()) * 1.2
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo * 1.1, hi * 1.1], mode="lines", line=dict(dash="dot", color="grey"),
                             name="+10%"))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo * 0.9, hi * 0.9], mode="lines", line=dict(dash="dot", color="grey"),
                             name="-10%", fill="tonexty", fillcolor="rgba(150,150,150,0.12)"))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="black"), name="predicted = measured"))
    for name, g in df.groupby("cost_model", sort=False):
        f = summary["cost_models"][name]
        fig.add_trace(go.Scatter(
            x=g["measured_ms"], y=g["predicted_ms"], mode="markers", marker=dict(size=9),
            name=f"{name}: {f['within_10pct']:.0%} within +-10%, MAPE {f['mape']:.1%}, Spearman {f['spearman']:.2f}",
            text=[f"config {c}" for c in g["config"]],
        ))
    floor = summary["noise_floor"]["share_within_10pct"]
    fig.update_layout(
        title=f"Latency cost models on {summary['fingerprint']['cpu']} (batch {summary['fingerprint']['batch_size']}, "
              f"{summary['fingerprint']['threads']} thread): {summary['configurations']} random configurations; "
              f"noise floor {floor:.0%}",
        xaxis=dict(title="measured (ms, ONNX Runtime)", type="log"), yaxis=dict(title="predicted (ms)", type="log"),
        width=1100, height=800, legend=dict(x=0.01, y=0.99),
    )
    atomic_write(out_dir / "validation.html", fig.to_html(include_plotlyjs=True, full_html=True))
    chromium = find_chromium() if png else None
    if chromium:
        try:
            atomic_write(out_dir / "validation.png", _png_bytes(fig, chromium))
        except Exception as exc:  # noqa: BLE001 - the CSV and HTML stand without the PNG
            log.info(f"validation.png not written: {type(exc).__name__}: {exc}")


def _run(action: str, cfg: DictConfig) -> None:
    for noisy in ("kaleido", "choreographer"):  # PNG export logs every browser step at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    build(cfg) if action == "build" else validate(cfg)
