"""Does a bundle hold what the search recorded? Measured now on the bundle's own files, compared within tolerances.

- size: the byte count of ``weights.cpz`` within ``size_rel`` (1%) of the recorded size (it should be exact);
- accuracy: the PyTorch replay's validation accuracy, before any extra fine-tune, within ``accuracy_points``
  (0.3 points) of the recorded one (the replay is deterministic; a gap means the config or code changed);
- loader: ``bundle.load_model`` gives the replayed plain model's logits within ``loader_abs``;
- files: ``weights.cpz`` unpacks, ``model.onnx`` passes ``onnx.checker``, neither changed since pick (sha256);
- a runtime's own files (``BaseCostModel.runtime_files``: OpenVINO's ``model.xml`` / ``model.bin``), where the
  cost model ships them: unchanged since pick, loaded by that runtime (``load``), and its validation accuracy on
  them within ``accuracy_points`` of the recorded accuracy (of the PyTorch model after a pick's fine-tune);
- latency, told apart from the machine's noise: ``model.onnx`` (or the runtime's own files, which the cost
  model then times) is timed together with (interleaved, in one
  ``measure_many``) the ONNX model the search stored for the trial and the uncompressed model's (the study's
  artifact store). *Same model*: the bundle's reading within ``latency_rel`` (10%), or ``latency_spreads`` (3) x
  the two readings' combined relative interquartile range where larger, of the searched model's; a gap there is
  a mismatch, not noise, since a slow spell of the machine hits both alike. *Recorded figure*: the bundle's
  latency as a share of the uncompressed model's, against the share the search recorded, within 3 x the
  root-mean-square gap between two readings of one model taken apart in this study (``between_readings``: the
  baselines timed when they ran and again together at the end, ``remeasured.csv``) combined with the relative
  spread of the two readings taken now (``noise_now``: a machine busy at pick reads wider), at least 10%: on a
  shared 2-core VM readings of one model taken minutes apart moved by up to 50%. A rejection on latency says
  whether the machine was busy (its load average against its cores, ``machine`` in the report). Where the study's models are not at
  hand (a re-check of a moved bundle, a study without artifacts), the median must fall inside recorded +-
  max(3 x the recorded interquartile range, 10% of the recorded value). A failing reading is taken once more
  before it counts; a failure names the figure that missed, by how much, and the noise allowed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from objectives import Accuracy
from objectives.hardware import BaseCostModel, Measurement
from spaces import Artifact, to_plain, unpack
from spaces.materialize import as_input

from .bundle import load_model
from ..data import Splits
from ..results.outputs import write_json


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


def runtime_files(folder: Path, cost_model: BaseCostModel | None) -> dict[str, bytes] | None:
    """The cost model's own files in the bundle (``runtime_files``), by name; None where it ships none or one of
    them is missing (``files_now`` says which)."""
    names = cost_model.runtime_files if cost_model is not None else ()
    if not names or not all((folder / n).is_file() for n in names):
        return None
    return {n: (folder / n).read_bytes() for n in names}


def runtime_of(cost_model: BaseCostModel) -> dict[str, Any]:
    """What report.json says of a runtime with files of its own (``report["runtime"]``): {} for one without."""
    if not cost_model.runtime_files:
        return {}
    return {"runtime": {"name": cost_model.describe().get("runtime", cost_model.name),
                        "files": list(cost_model.runtime_files)}}


def accuracies(model: nn.Module, folder: Path, *, splits: Splits, cost_model: BaseCostModel) -> dict[str, Any]:
    """Validation and test accuracy of the PyTorch model and of the bundle's ONNX model; ``load_model``'s model
    on validation, and its largest logit difference from the plain form of ``model``; the validation accuracy on
    the cost model's own files where it ships some (``val.runtime``; None where they do not load)."""
    session, loaded = onnx_session(cost_model, (folder / "model.onnx").read_bytes()), load_model(folder)
    out: dict[str, Any] = {}
    for split, (x, y) in {"val": (splits.val_x, splits.val_y), "test": (splits.test_x, splits.test_y)}.items():
        acc = Accuracy(images=x, labels=y)
        out[split] = {"pytorch": acc.of(model), "onnx": acc.onnx(session)}
    out["val"]["loader"] = Accuracy(images=splits.val_x, labels=splits.val_y).of(loaded)  # activations in float
    if cost_model.runtime_files:
        files = runtime_files(folder, cost_model)
        try:
            run = cost_model.load(files) if files else None
        except Exception:  # noqa: BLE001 - files_now reports why, on the file
            run = None
        out["val"]["runtime"] = Accuracy(images=splits.val_x, labels=splits.val_y).runtime(run) if run else None
    with torch.no_grad():
        x = splits.val_x[:256]
        out["loader_max_abs_diff"] = float((loaded(x) - to_plain(model)(x)).abs().max())
    return out


@dataclass(frozen=True)
class Companions:
    """What a bundle's model is timed together with: the ONNX model the search stored for the trial
    (``searched``), the uncompressed model's (``uncompressed``) and its recorded latency (``uncompressed_ms``);
    ``between_rel``: the study's gap between two readings of one model taken apart (``between_readings``)."""

    searched: bytes | None = None
    uncompressed: bytes | None = None
    uncompressed_ms: float | None = None
    between_rel: float | None = None


def _together(cost_model: BaseCostModel, artifact: Artifact, c: Companions) -> dict[str, Any]:
    """One interleaved timing of the bundle's model and its companions."""
    others = {n: o for n, o in (("searched", c.searched), ("uncompressed", c.uncompressed)) if o is not None}
    twins = [Artifact(packed=b"", onnx=o, int8_layers=(), input_shape=artifact.input_shape, example=artifact.example)
             for o in others.values()]
    first, *rest = cost_model.measure_many([artifact, *twins])
    return {"measured": first, **dict(zip(others, rest))}


def latency(folder: Path, *, cost_model: BaseCostModel, input_shape: tuple[int, ...], recorded: float | None,
            spread: float, tol: Tolerances, example: Any = None, companions: Companions | None = None
            ) -> dict[str, Any]:
    """The latency of the bundle's files (the cost model's own, ``runtime_files``, where it ships some; else
    model.onnx: ``timed``), next to the search's reading and what it is checked against (nothing when latency was
    not an objective of the study): timed together with ``companions`` where they are given and the cost model
    can time the ONNX models the search stored (its ``times_onnx``: ONNX Runtime, OpenVINO converting them in
    memory), else against the recorded band."""
    band = tol.latency_band(recorded, spread) if recorded is not None else (0.0, float("inf"))
    files = runtime_files(folder, cost_model)
    artifact = Artifact(packed=(folder / "weights.cpz").read_bytes(), onnx=(folder / "model.onnx").read_bytes(),
                        int8_layers=(), input_shape=input_shape, example=example, module=load_model(folder),
                        files=files)
    timed = next(iter(files)) if files else "model.onnx"
    inputs = "random normal (no example inputs given)" if example is None or len(example) == 0 else \
        f"{len(example)} example inputs (real data, as the search measured)"
    c = companions or Companions()
    together = getattr(cost_model, "times_onnx", False) and (c.searched is not None or c.uncompressed is not None)
    if recorded is None or not together:
        m, readings = measure_latency(cost_model, artifact, recorded if recorded is not None else 0.0, band,
                                      attempts=2 if recorded is not None else 1)
        return {"recorded": recorded, "recorded_spread": spread, "measured": m.value_ms, "measured_spread": m.spread_ms,
                "readings": readings, "allowed": [round(band[0], 4), round(band[1], 4)] if recorded is not None
                else None, "inputs": inputs, "timed": timed}
    out: dict[str, Any] = {}
    for attempt in range(2):  # a failing reading is taken once more before it counts
        t = _together(cost_model, artifact, c)
        m = t["measured"]
        out = {"recorded": recorded, "recorded_spread": spread, "measured": m.value_ms, "measured_spread": m.spread_ms,
               "readings": [*out.get("readings", []), round(m.value_ms, 4)], "allowed": None, "inputs": inputs,
               "timed": timed, "together": {}}
        if "searched" in t:
            s = t["searched"]
            noise = float(np.hypot(m.spread_ms / m.value_ms, s.spread_ms / s.value_ms))
            out["together"].update({"searched_ms": s.value_ms, "searched_spread": s.spread_ms,
                                    "same_bytes": timed == "model.onnx" and artifact.onnx == c.searched,
                                    "apart": m.value_ms / s.value_ms - 1,
                                    "allowed": max(tol.latency_rel, tol.latency_spreads * noise)})
        if "uncompressed" in t and c.uncompressed_ms:
            u = t["uncompressed"]
            now = float(np.hypot(m.spread_ms / m.value_ms, u.spread_ms / u.value_ms))  # the readings' own noise
            out["together"].update({
                "uncompressed_ms": u.value_ms, "uncompressed_recorded_ms": c.uncompressed_ms,
                "share_now": m.value_ms / u.value_ms, "share_recorded": recorded / c.uncompressed_ms,
                "share_apart": (m.value_ms / u.value_ms) / (recorded / c.uncompressed_ms) - 1,
                "share_allowed": max(tol.latency_rel, tol.latency_spreads * float(np.hypot(c.between_rel or 0.0, now))),
                "between_readings": c.between_rel, "noise_now": now})
        out["machine"] = machine_load()
        if not _latency_reasons(out, tol):
            break
    return out


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
    reasons += _runtime_accuracy_reasons(report, tol)
    reasons += _latency_reasons(report["latency_ms"], tol)
    diff = report.get("loader", {}).get("max_abs_diff")
    if diff is not None and diff > tol.loader_abs:
        reasons.append(f"loader: load_model's logits differ from the replayed model's by {diff:.2e} "
                       f"(> {tol.loader_abs})")
    for name, facts in report.get("files", {}).items():
        reasons += [f"{name}: {r}" for r in facts.get("problems", [])]
    return reasons


def _runtime_accuracy_reasons(report: dict[str, Any], tol: Tolerances) -> list[str]:
    """The runtime's own files scored against the recorded accuracy, or against the PyTorch model they were
    written from where pick fine-tuned it (or accuracy was not an objective)."""
    rt, acc = report.get("runtime"), report["accuracy"]["val"]
    if not rt or acc.get("runtime") is None:
        return []
    tuned = bool(report.get("finetune", {}).get("steps")) or acc["recorded"] is None
    ref, whose = (acc["pytorch"], "the PyTorch model they were written from scores") if tuned else \
        (acc["recorded"], "the search recorded")
    gap = abs(acc["runtime"] - ref) * 100
    if gap <= tol.accuracy_points:
        return []
    return [f"accuracy: {rt['files'][0]} scores {acc['runtime']:.4f} on validation in {rt['name']}, {whose} "
            f"{ref:.4f} ({gap:.2f} points apart, allowed {tol.accuracy_points})"]


def machine_load() -> dict[str, float]:
    """The machine's load while it timed: the 1-minute load average against its cores."""
    return {"load_1min": round(os.getloadavg()[0], 2), "cores": os.cpu_count() or 1}


def busy(machine: dict[str, float] | None) -> str:
    """What a latency rejection adds about the machine: busy (a load average above its cores) or not."""
    if not machine:
        return ""
    state = "busy" if machine["load_1min"] > machine["cores"] else "not busy"
    return f" (the machine was {state}: load {machine['load_1min']:.1f} on {machine['cores']:.0f} cores)"


def _latency_reasons(lat: dict[str, Any], tol: Tolerances) -> list[str]:
    """What the latency check finds wrong (``latency``'s report): the figures timed together where they are
    there, else the recorded band."""
    t, timed = lat.get("together"), lat.get("timed", "model.onnx")
    if t:
        out = []
        # byte for byte the model the search timed: the two readings' gap is the machine's noise, not a finding
        # (identical files read 18.5% apart, 17.9% allowed, on a 2-core VM running the test suite in parallel)
        if "apart" in t and not t.get("same_bytes") and abs(t["apart"]) > t["allowed"]:
            out.append(f"latency: {timed} reads {lat['measured']:.3f} ms and the ONNX model the search timed for "
                       f"this trial {t['searched_ms']:.3f} ms, timed together now: {t['apart']:+.0%} apart, more "
                       f"than the {t['allowed']:.0%} their spreads allow ({lat['measured_spread']:.3f} and "
                       f"{t['searched_spread']:.3f} ms): the bundle is not the model the search measured")
        # the share's band stands on the study's own noise; a study that cannot tell it (fewer than two models timed
        # again at its end: space=channels has two baselines) leaves the same-model check above to decide, where
        # there is one: a 10% band alone rejected SqueezeNet's valid bundles at +23% and +36% on a shared VM
        unknown = t.get("between_readings", 0.0) is None and "apart" in t
        if "share_apart" in t and not unknown and abs(t["share_apart"]) > t["share_allowed"]:
            out.append(f"latency: {timed} takes {t['share_now']:.3f} of the uncompressed model's latency timed "
                       f"together now ({lat['measured']:.3f} of {t['uncompressed_ms']:.3f} ms), the search recorded "
                       f"{t['share_recorded']:.3f} ({lat['recorded']:.3f} of {t['uncompressed_recorded_ms']:.3f} ms): "
                       f"{t['share_apart']:+.0%} apart, more than the {t['share_allowed']:.0%} allowed (3 x the "
                       "study's gap between two readings of one model and the spread of these readings, at least "
                       "10%)")
        return [r + busy(lat.get("machine")) for r in out]
    if lat["recorded"] is None:
        return []
    lo, hi = tol.latency_band(lat["recorded"], lat["recorded_spread"])
    if lo <= lat["measured"] <= hi:
        return []
    return [f"latency: {lat['measured']:.3f} ms measured on {timed}, outside the recorded "
            f"{lat['recorded']:.3f} ms +- noise band [{lo:.3f}, {hi:.3f}] ms"]


def files_now(bundle_dir: Path, recorded: dict[str, Any] | None = None,
              cost_model: BaseCostModel | None = None) -> dict[str, Any]:
    """Byte count and hash of the bundle's files (those ``recorded`` in report.json, and ``cost_model``'s own), with
    problems: missing, changed since pick, unreadable, not loaded by the cost model's runtime."""
    own = cost_model.runtime_files if cost_model is not None else ()
    out = {}
    for name in dict.fromkeys(["model.onnx", "weights.cpz", *(recorded or {}), *own]):
        if not (bundle_dir / name).is_file() and name not in ("model.onnx", "weights.cpz"):
            out[name] = {"bytes": 0, "sha256": "", "problems": ["missing from the bundle"]}
            continue
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
    files = runtime_files(bundle_dir, cost_model)
    if files:
        try:
            cost_model.load(files)
        except Exception as exc:  # noqa: BLE001 - each runtime raises its own error types
            name = runtime_of(cost_model)["runtime"]["name"]
            out[own[0]]["problems"].append(f"does not load in {name}: {(str(exc).splitlines() or [repr(exc)])[0]}")
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
    measuring = cost_model.reference() if cost_model is not None else None
    report["files"] = files_now(bundle_dir, report.get("files"), measuring)
    report["size_bytes"]["measured"] = report["files"]["weights.cpz"]["bytes"]
    if cost_model is not None:
        lat = report["latency_ms"]
        report["latency_ms"] = latency(bundle_dir, cost_model=cost_model.reference(), input_shape=tuple(report["input_shape"]),
                                       recorded=lat["recorded"], spread=lat["recorded_spread"], tol=tol,
                                       example=None if example is None else as_input(example))
    report["reasons"] = check(report, tol)
    report["verified"] = not report["reasons"]
    report["tolerances"] = asdict(tol)
    write_json(bundle_dir / "report.json", report)
    return report
