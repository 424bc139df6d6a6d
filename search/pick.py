"""``python -m search.pick [overrides]``: choose one trial of a finished study and ship it as a bundle.

The same config tree as ``python -m search``: the overrides that named the study (``experiment=``,
``results_dir=``, ``model=`` ...) find it again, and ``pick.*`` says which trial (``search/selection.py``).
The trial is replayed from its stored params with the config the study recorded, written to
``results/<study>/picked/<trial>/`` (``search/bundle.py``) and measured again on the written files
(``search/verify.py``). Exit status: 0 verified, 1 written but not verified, 2 bad input.
"""
from __future__ import annotations

import logging
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import optuna
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from objectives import cpu_name
from spaces import Artifact

from . import card
from .bundle import bundle_spec, layer_table, staging, write_model_files
from .outputs import atomic_write, trials_frame, write_json
from .run import Prepared, prepare, versions
from .selection import Rule, choose, describe, front_table
from .train import recover
from .verify import Tolerances, accuracies, check, files_now, latency

log = logging.getLogger("search")

# Keys that may differ between the search and the pick without changing the replay.
_NOT_REPLAYED = (
    "pick", "results_dir", "png", "study.n_trials", "study.timeout_s", "study.storage", "data.download_dir",
    "early_stopping",  # decides which students finish, not how a finished one is built
)


@dataclass
class Picked:
    path: Path
    report: dict[str, Any]
    model: nn.Module  # the replayed (and fine-tuned) PyTorch model the bundle was materialized from

    @property
    def verified(self) -> bool:
        return bool(self.report["verified"])


def open_recorded(cfg: DictConfig) -> tuple[optuna.Study, Path]:
    """The study the search wrote for this config (never creates one)."""
    name, out_dir = str(cfg.study.name), Path(cfg.results_dir) / str(cfg.study.name)
    if not cfg.study.storage and not (out_dir / "study.db").is_file():
        raise FileNotFoundError(
            f"no study at {out_dir / 'study.db'}; run `python -m search` with the same overrides first"
        )
    storage = cfg.study.storage or f"sqlite:///{(out_dir / 'study.db').as_posix()}"
    try:
        return optuna.load_study(study_name=name, storage=storage), out_dir
    except KeyError as exc:
        raise ValueError(f"study.name: no study {name!r} in {storage}") from exc


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or not d:
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for key, value in d.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def _replayed(key: str) -> bool:
    return not any(key == k or key.startswith(k + ".") for k in _NOT_REPLAYED)


def replay_config(cfg: DictConfig, out_dir: Path) -> DictConfig:
    """The config the study was searched with (its config.yaml) over this command's, whose ``pick`` and
    ``results_dir`` win; a key the study's file lacks (written by an older version) keeps this command's value."""
    path = out_dir / "config.yaml"
    if not path.is_file():
        log.info(f"note: {path} is missing; replaying with this command's config")
        return cfg
    recorded = OmegaConf.load(path)
    now, then = (_flatten(OmegaConf.to_container(c, resolve=True)) for c in (cfg, recorded))
    differ = [k for k in sorted(set(now) | set(then)) if _replayed(k) and now.get(k) != then.get(k)]
    if differ:
        pairs = (f"{k} (study {then.get(k, '<absent>')!r}, here {now.get(k, '<absent>')!r})" for k in differ)
        log.info("note: replaying with the study's recorded config, which differs from this command at "
                 + ", ".join(pairs))
    return OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), recorded,
                           {"results_dir": cfg.results_dir, "pick": OmegaConf.to_container(cfg.pick)})


def fine_tune(p: Prepared, model: nn.Module, params: dict[str, Any], epochs: float) -> int:
    """``epochs`` more distillation epochs in place (steps = epochs * len(train) / batch); returns the steps.

    The built model is already in its final form (BN folded, quantizers calibrated), as in the recovery's
    quantization-aware phase, so this continues at that phase's ``qat_lr``.
    """
    if epochs <= 0:
        return 0
    if params == p.setup.space.identity():
        log.info("note: pick.finetune_epochs ignored: the uncompressed model is the teacher itself")
        return 0
    r, s = p.setup.recovery, p.setup.splits
    steps = max(1, round(epochs * len(s.train_x) / r.batch_size))
    log.info(f"fine-tuning {steps} steps ({epochs} epochs) by distillation")
    logits, temperature, alpha = p.pipeline.teacher_logits, r.temperature, r.alpha
    if p.pipeline.is_student(params):  # a student keeps its own teacher(s), temperature and alpha
        d = p.setup.distillation
        logits, temperature, alpha = p.pipeline.student_logits, d.value("temperature", params), d.value("alpha", params)
    recover(model, s.train_x, s.train_y, logits, steps=steps, lr=r.qat_lr, batch_size=r.batch_size,
            temperature=temperature, alpha=alpha, seed=r.seed + 1)
    return steps


def uncompressed(df, p: Prepared) -> dict[str, Any]:
    ref = df[(df["baseline"] == "uncompressed") & (df["state"] == "COMPLETE")]
    row = ref.iloc[0] if len(ref) else None
    return {"trial": int(row["number"]) if row is not None else None, "val_accuracy": p.val_accuracy,
            "test_accuracy": p.test_accuracy, "size_bytes": float(row["size_bytes"]) if row is not None else None,
            "latency_ms": float(row["latency_ms"]) if row is not None else None}


def machine() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform()}


def summary(report: dict[str, Any]) -> str:
    a, s, lat = report["accuracy"], report["size_bytes"], report["latency_ms"]
    return "\n".join([
        f"{'':26}{'recorded':>12}{'measured now':>14}",
        f"{'val accuracy (PyTorch)':26}{a['val']['recorded']:>12.4f}{a['val']['pytorch_replay']:>14.4f}",
        *([f"{'  after fine-tune':26}{'':>12}{a['val']['pytorch']:>14.4f}"] if report["finetune"]["steps"] else []),
        f"{'val accuracy (ONNX)':26}{'':>12}{a['val']['onnx']:>14.4f}",
        f"{'test accuracy (ONNX)':26}{'':>12}{a['test']['onnx']:>14.4f}",
        f"{'size (bytes)':26}{int(s['recorded']):>12,}{s['measured']:>14,}",
        f"{'latency (ms)':26}{lat['recorded']:>12.3f}{lat['measured']:>14.3f}",
    ])


def announce(picked: Picked) -> None:
    log.info(summary(picked.report))
    if picked.verified:
        log.info(f"verified; bundle in {picked.path}/")
        return
    bar = "!" * 78
    log.error("\n".join([bar, f"BUNDLE NOT VERIFIED: {picked.path}", *(f"  - {r}" for r in picked.report["reasons"]),
                         "  (the bundle is written; report.json says verified: false)", bar]))


@dataclass
class Replay:
    """One trial rebuilt from its stored params: what the bundle is written from."""

    study: optuna.Study
    trial: optuna.trial.FrozenTrial
    rule: str
    cfg: DictConfig  # the config replayed (the study's own)
    prepared: Prepared
    model: nn.Module
    artifact: Artifact
    replay_val: float  # validation accuracy of the replay, before any extra fine-tune
    finetune: dict[str, float]


def replay(study: optuna.Study, number: int, rule: str, run_cfg: DictConfig, epochs: float) -> Replay:
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    p = prepare(run_cfg)
    model = p.pipeline.build(trial.params)
    replay_val = p.pipeline.accuracy(model)
    steps = fine_tune(p, model, trial.params, epochs)
    artifact = p.pipeline.materialize(model)
    return Replay(study, trial, rule, run_cfg, p, model, artifact, replay_val, {"epochs": epochs, "steps": steps})


def measurements(r: Replay, folder: Path, tol: Tolerances) -> dict[str, Any]:
    """Accuracy, size and latency, recorded by the search and measured now on the files in ``folder``."""
    s, spread = r.prepared.setup, float(r.trial.user_attrs.get("latency_spread_ms", 0.0))
    measuring = s.cost_model.reference()  # a study searched on a predictor is verified on the real runtime
    acc, files = accuracies(r.model, folder, splits=s.splits, cost_model=measuring), files_now(folder)
    return {
        "accuracy": {"val": {"recorded": r.trial.values[0], "pytorch_replay": r.replay_val, **acc["val"]},
                     "test": {"recorded": None, **acc["test"]}},
        "size_bytes": {"recorded": r.trial.values[1], "measured": files["weights.cpz"]["bytes"],
                       "onnx_bytes": files["model.onnx"]["bytes"]},
        "latency_ms": latency(folder, cost_model=measuring, input_shape=r.artifact.input_shape, tol=tol,
                              recorded=r.trial.values[2], spread=spread, example=r.artifact.example),
        "loader": {"max_abs_diff": acc["loader_max_abs_diff"]}, "files": files,
    }


def student(r: Replay) -> dict[str, Any] | None:
    """A student trial's architecture and training, for the card; None for a trial of the teacher itself."""
    p, params = r.prepared, r.trial.params
    if not p.pipeline.is_student(params):
        return None
    d = p.setup.distillation
    return {"architecture": {k.removeprefix("student."): v for k, v in params.items() if k.startswith("student.")},
            "steps": d.total_steps(len(p.setup.splits.train_x)), "temperature": d.value("temperature", params),
            "alpha": d.value("alpha", params), "ensemble": len(p.setup.teachers) + 1}


def reference_model(r: Replay) -> nn.Module:
    """What the layer table compares the picked model with: the teacher, or a student's own architecture."""
    space = r.prepared.setup.space
    return space.family.build(r.trial.params) if r.prepared.pipeline.is_student(r.trial.params) else r.prepared.teacher


def context(r: Replay, df) -> dict[str, Any]:
    """What the figures are about: the trial, the reference, the machine and the software."""
    p = r.prepared
    return {
        "study": r.study.study_name, "trial": r.trial.number, "baseline": r.trial.user_attrs.get("baseline", ""),
        "rule": r.rule, "model": r.cfg.model.name, "data": r.cfg.data.name, "input_shape": list(r.artifact.input_shape),
        "num_classes": p.setup.splits.num_classes, "onnx_input": "input", "uncompressed": uncompressed(df, p),
        "finetune": r.finetune, "recovery": asdict(p.setup.recovery), "int8_layers": list(r.artifact.int8_layers),
        "student": student(r),
        "machine": machine(), "cost_model": p.setup.cost_model.reference().describe(),
        "recorded_cost_model": r.study.user_attrs.get("cost_model"), "versions": versions_now(),
        "study_figures": [f"../../{n}" for n in ("pareto.html", "pareto.png") if (p.setup.out_dir / n).is_file()],
    }


def write_bundle(r: Replay, df, final: Path, tol: Tolerances) -> Picked:
    """Files first, then measured on them, then report.json and README.md; all moved into ``final`` at once."""
    spec = bundle_spec(study=r.study.study_name, number=r.trial.number, baseline=r.trial.user_attrs.get("baseline", ""),
                       params=r.trial.params, input_shape=r.artifact.input_shape, config=r.cfg)
    with staging(final) as folder:
        write_model_files(folder, r.artifact, spec)
        report = {**context(r, df), "verified": None, "reasons": [], "tolerances": asdict(tol),
                  **measurements(r, folder, tol)}
        report["reasons"] = check(report, tol)
        report["verified"] = not report["reasons"]
        write_json(folder / "report.json", report)
        atomic_write(folder / "README.md", card.render(report, layer_table(reference_model(r), r.model)))
    return Picked(final, report, r.model)


def pick(cfg: DictConfig, tol: Tolerances | None = None) -> Picked:
    """Choose a trial by ``cfg.pick``, replay it, write and verify its bundle; see the module docstring."""
    tol = tol or Tolerances()
    rule, epochs = Rule.from_cfg(cfg.get("pick")), cfg.get("pick", {}).get("finetune_epochs") or 0
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs < 0:
        raise ValueError(f"pick.finetune_epochs must be a number >= 0, got {epochs!r}")
    study, out_dir = open_recorded(cfg)
    df = trials_frame(study)
    log.info(f"study {study.study_name!r}: the front and the baselines\n{front_table(df).to_string(index=False)}")
    choice = choose(df, rule)
    log.info(f"picked {describe(df[df['number'] == choice.number].iloc[0])}: {choice.reason}")
    r = replay(study, choice.number, choice.reason, replay_config(cfg, out_dir), float(epochs))
    picked = write_bundle(r, df, out_dir / "picked" / str(choice.number), tol)
    announce(picked)
    return picked


def versions_now() -> dict[str, str]:
    import numpy
    import onnx

    return {**versions(), "onnx": onnx.__version__, "numpy": numpy.__version__}


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        picked = pick(cfg)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one line, non-zero exit
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if not picked.verified:
        print(f"error: bundle {picked.path} written but not verified: {'; '.join(picked.report['reasons'])}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
