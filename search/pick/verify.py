"""Does a bundle hold what the search recorded? Measured now on the bundle's own files, compared within tolerances.

- size: the byte count of ``weights.cpz`` within ``size_rel`` (1%) of the recorded size (it should be exact);
- accuracy: the PyTorch replay's validation accuracy, before any extra fine-tune, within ``accuracy_points``
  (0.3 points) of the recorded one (the replay is deterministic; a gap means the config or code changed);
- loader: ``bundle.load_model`` gives the replayed plain model's logits within ``loader_abs``;
- files: ``weights.cpz`` unpacks, ``model.onnx`` passes ``onnx.checker``, neither changed since pick (sha256);
- latency: the median re-measured on ``model.onnx`` inside recorded +- max(``latency_spreads`` (3) x the
  recorded interquartile range, ``latency_rel`` (10%) x the recorded value): three IQRs is about the
  Tukey-fence noise of one measurement, the 10% floor covers a recorded spread that happened to be tiny.
  A reading outside the band is taken once more before it counts (a noisy neighbour should not fail a bundle).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from objectives import Accuracy, BaseCostModel, Measurement
from spaces import Artifact, to_plain, unpack

from .bundle import load_model
from ..data import Splits
from ..outputs import write_json


@dataclass(frozen=True)
class Tolerances:
    """How far a bundle's figures may be from the search's and still verify (see the module docstring)."""

    size_rel: float = 0.01
    accuracy_points: float = 0.3  # percentage points, i.e. 0.003 in accuracy fraction
    latency_spreads: float = 3.0
    latency_rel: float = 0.10
    loader_abs: float = 1e-4  # largest |logit| difference between load_model and the replayed plain model

    def latency_band(self, recorded_ms: float, spread_ms: float) -> tuple[float, float]:
        margin = max(self.latency_spreads * spread_ms, self.latency_rel * recorded_ms)
        return max(0.0, recorded_ms - margin), recorded_ms + margin


def file_facts(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def measure_latency(
    cost_model: BaseCostModel, artifact: Artifact, recorded_ms: float, band: tuple[float, float], attempts: int = 2
) -> tuple[Measurement, list[float]]:
    """The reading closest to ``recorded_ms`` among up to ``attempts`` (stops at the first inside ``band``)."""
    readings: list[Measurement] = []
    for _ in range(attempts):
        readings.append(cost_model.latency_ms(artifact))
        if band[0] <= readings[-1].value_ms <= band[1]:
            break
    return min(readings, key=lambda m: abs(m.value_ms - recorded_ms)), [round(m.value_ms, 4) for m in readings]


def onnx_session(cost_model: BaseCostModel, onnx_bytes: bytes):
    if hasattr(cost_model, "session"):  # the study's runtime settings (threads, optimisation level)
        return cost_model.session(onnx_bytes)
    import onnxruntime as ort

    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def accuracies(model: nn.Module, folder: Path, *, splits: Splits, cost_model: BaseCostModel) -> dict[str, Any]:
    """Validation and test accuracy of the PyTorch model and of the bundle's ONNX model; ``load_model``'s model
    on validation, and its largest logit difference from the plain form of ``model``."""
    session, loaded = onnx_session(cost_model, (folder / "model.onnx").read_bytes()), load_model(folder)
    out: dict[str, Any] = {}
    for split, (x, y) in {"val": (splits.val_x, splits.val_y), "test": (splits.test_x, splits.test_y)}.items():
        acc = Accuracy(images=x, labels=y)
        out[split] = {"pytorch": acc.of(model), "onnx": acc.onnx(session)}
    out["val"]["loader"] = Accuracy(images=splits.val_x, labels=splits.val_y).of(loaded)  # activations in float
    with torch.no_grad():
        x = splits.val_x[:256]
        out["loader_max_abs_diff"] = float((loaded(x) - to_plain(model)(x)).abs().max())
    return out


def latency(folder: Path, *, cost_model: BaseCostModel, input_shape: tuple[int, ...], recorded: float | None,
            spread: float, tol: Tolerances, example: Any = None) -> dict[str, Any]:
    """The latency of the bundle's files, next to the search's reading and the band it must fall in (none when
    latency was not an objective of the study)."""
    band = tol.latency_band(recorded, spread) if recorded is not None else (0.0, float("inf"))
    artifact = Artifact(packed=(folder / "weights.cpz").read_bytes(), onnx=(folder / "model.onnx").read_bytes(),
                        int8_layers=(), input_shape=input_shape, example=example, module=load_model(folder))
    m, readings = measure_latency(cost_model, artifact, recorded if recorded is not None else 0.0, band,
                                  attempts=2 if recorded is not None else 1)
    inputs = "random normal (no example inputs given)" if example is None or len(example) == 0 else \
        f"{len(example)} example inputs (real data, as the search measured)"
    return {"recorded": recorded, "recorded_spread": spread, "measured": m.value_ms, "measured_spread": m.spread_ms,
            "readings": readings, "allowed": [round(band[0], 4), round(band[1], 4)] if recorded is not None else None,
            "inputs": inputs}


def check(report: dict[str, Any], tol: Tolerances) -> list[str]:
    """Reasons the measured values disagree with the recorded ones (empty: verified). Pure."""
    reasons = []
    size = report["size_bytes"]
    if size["recorded"] is not None and abs(size["measured"] - size["recorded"]) > tol.size_rel * size["recorded"]:
        reasons.append(f"size: weights.cpz is {size['measured']:,} B, the search recorded {int(size['recorded']):,} B "
                       f"(more than {tol.size_rel:.0%} apart)")
    acc = report["accuracy"]["val"]
    gap = abs(acc["pytorch_replay"] - acc["recorded"]) * 100 if acc["recorded"] is not None else 0.0
    if gap > tol.accuracy_points:
        reasons.append(f"accuracy: the PyTorch replay scores {acc['pytorch_replay']:.4f} on validation, the search "
                       f"recorded {acc['recorded']:.4f} ({gap:.2f} points apart, allowed {tol.accuracy_points})")
    for name, v in report.get("objectives", {}).items():
        if abs(v["measured"] - v["recorded"]) > tol.size_rel * abs(v["recorded"]):
            reasons.append(f"{name}: {v['measured']:,.6g} recomputed on the replay, the search recorded "
                           f"{v['recorded']:,.6g} (more than {tol.size_rel:.0%} apart)")
    lat = report["latency_ms"]
    lo, hi = tol.latency_band(lat["recorded"], lat["recorded_spread"]) if lat["recorded"] is not None else \
        (0.0, float("inf"))
    if not lo <= lat["measured"] <= hi:
        reasons.append(f"latency: {lat['measured']:.3f} ms measured on model.onnx, outside the recorded "
                       f"{lat['recorded']:.3f} ms +- noise band [{lo:.3f}, {hi:.3f}] ms")
    diff = report.get("loader", {}).get("max_abs_diff")
    if diff is not None and diff > tol.loader_abs:
        reasons.append(f"loader: load_model's logits differ from the replayed model's by {diff:.2e} "
                       f"(> {tol.loader_abs})")
    for name, facts in report.get("files", {}).items():
        reasons += [f"{name}: {r}" for r in facts.get("problems", [])]
    return reasons


def files_now(bundle_dir: Path, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Byte count and hash of the bundle's files, with problems: changed since pick, unreadable."""
    out = {}
    for name in ("model.onnx", "weights.cpz"):
        facts, problems = file_facts(bundle_dir / name), []
        if recorded and name in recorded and recorded[name]["sha256"] != facts["sha256"]:
            problems.append("changed since it was written (sha256 differs from report.json)")
        out[name] = {**facts, "problems": problems}
    try:
        unpack((bundle_dir / "weights.cpz").read_bytes())
    except ValueError as exc:
        out["weights.cpz"]["problems"].append(f"does not unpack: {exc}")
    try:
        import onnx

        onnx.checker.check_model(onnx.load_from_string((bundle_dir / "model.onnx").read_bytes()))
    except Exception as exc:  # the checker raises its own error types
        out["model.onnx"]["problems"].append(f"fails onnx.checker: {str(exc).splitlines()[0]}")
    return out


def verify_bundle(
    bundle_dir: str | Path, *, cost_model: BaseCostModel | None = None, tol: Tolerances | None = None,
    example: Any = None,
) -> dict[str, Any]:
    """Re-check a written bundle against its report.json: file size and hashes now, latency too if a
    ``cost_model`` is given (else the pick-time reading stands). Rewrites report.json; returns it.

    ``example``: inputs to time on (an array shaped like the model's input, e.g. validation images). The search
    measured on real images, and some int8 kernels run at a speed that depends on the data (README, cost
    models); without ``example`` the cost model times seeded random normal inputs, and the report says so
    (``latency_ms.inputs``)."""
    bundle_dir = Path(bundle_dir)
    report = json.loads((bundle_dir / "report.json").read_text())
    tol = tol or Tolerances(**report.get("tolerances", {}))
    report["files"] = files_now(bundle_dir, report.get("files"))
    report["size_bytes"]["measured"] = report["files"]["weights.cpz"]["bytes"]
    if cost_model is not None:
        lat = report["latency_ms"]
        report["latency_ms"] = latency(bundle_dir, cost_model=cost_model.reference(), input_shape=tuple(report["input_shape"]),
                                       recorded=lat["recorded"], spread=lat["recorded_spread"], tol=tol,
                                       example=None if example is None else np.asarray(example, dtype=np.float32))
    report["reasons"] = check(report, tol)
    report["verified"] = not report["reasons"]
    report["tolerances"] = asdict(tol)
    write_json(bundle_dir / "report.json", report)
    return report
