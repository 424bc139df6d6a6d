"""``python -m search.pick [overrides]``: choose one trial of a finished study and ship it as a bundle.

The same config tree as ``python -m search``: the overrides that named the study (``experiment=``,
``results_dir=``, ``model=`` ...) find it again, and ``pick.*`` says which trial (``search/results/selection.py``).
The trial is replayed from its stored params with the config the study recorded, written to
``results/<study>/picked/<trial>/`` (``search/pick/bundle.py``) and measured again on the written files
(``search/pick/verify.py``). Exit status: 0 verified, 1 written but not verified, 2 bad input.
"""
from __future__ import annotations

import logging
import os
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from objectives.hardware import Measurement, cpu_name
from objectives import Outcome
from spaces import Artifact, JointSpace, StudentSpace
from spaces.materialize import input_dtype_of

from . import card
from .bundle import bundle_spec, layer_table, staging, structure_of, write_model_files, write_runtime_files
from .._checks import flat, under
from ..data import FROM_DATA
from ..results.front import objective_names
from ..results.outputs import atomic_write, objective_names_of, trials_frame, write_json
from ..app import Prepared, prepare, threads, versions
from ..results.selection import Rule, choose, describe, front_table
from ..training.loops import recover
from ..storage.backends import backend as opened, is_server, load_study, url_for
from ..storage.artifacts import fetch, publish, onnx_of, store
from .verify import Companions, Tolerances, accuracies, check, files_now, latency, runtime_of
from ..loop.remeasure import between_readings

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
    storage = url_for(cfg.study.storage, results_dir=cfg.results_dir, name=name)
    if not cfg.study.storage and storage.startswith("sqlite") and not (out_dir / "study.db").is_file():
        raise FileNotFoundError(
            f"no study at {out_dir / 'study.db'}; run `python -m search` with the same overrides first"
        )
    try:
        return load_study(name, storage), out_dir
    except KeyError as exc:
        raise ValueError(f"study.name: no study {name!r} in {storage}") from exc


def _replayed(key: str) -> bool:
    return not under(key, _NOT_REPLAYED)


def replay_config(cfg: DictConfig, out_dir: Path) -> DictConfig:
    """The config the study was searched with (its config.yaml) over this command's, whose ``pick`` and
    ``results_dir`` win; a key the study's file lacks (written by an older version) keeps this command's value."""
    path = out_dir / "config.yaml"
    if not path.is_file():
        log.info(f"note: {path} is missing; replaying with this command's config")
        return cfg
    recorded = OmegaConf.load(path)
    if "onnx_int4" not in recorded:  # a study from before the setting stored every ONNX weight at 8 bits
        recorded.onnx_int4 = "none"
    here = cfg.copy()
    with open_dict(here):  # null here: "from the data", which the study read and recorded
        for key in FROM_DATA:
            if here.data.get(key) is None and recorded.get("data", {}).get(key) is not None:
                here.data[key] = recorded.data[key]
    now, then = (flat(OmegaConf.to_container(c, resolve=True)) for c in (here, recorded))
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
    """The uncompressed baseline's recorded values (by objective name) and the teacher's accuracies."""
    ref = df[(df["baseline"] == "uncompressed") & (df["state"] == "COMPLETE")]
    row = ref.iloc[0] if len(ref) else None
    out: dict[str, Any] = {"trial": int(row["number"]) if row is not None else None, "val_accuracy": p.val_accuracy,
                           "test_accuracy": p.test_accuracy, "size_bytes": None, "latency_ms": None}
    if row is not None:
        out.update({name: float(row[name]) for name in objective_names(df)})
    return out


def machine() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform()}


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def summary(report: dict[str, Any]) -> str:
    a, s, lat = report["accuracy"], report["size_bytes"], report["latency_ms"]
    return "\n".join([
        f"{'':26}{'recorded':>12}{'measured now':>14}",
        f"{'val accuracy (PyTorch)':26}{_num(a['val']['recorded'], '.4f'):>12}{a['val']['pytorch_replay']:>14.4f}",
        *([f"{'  after fine-tune':26}{'':>12}{a['val']['pytorch']:>14.4f}"] if report["finetune"]["steps"] else []),
        f"{'val accuracy (ONNX)':26}{'':>12}{a['val']['onnx']:>14.4f}",
        *([f"{'val accuracy (' + report['runtime']['files'][0] + ')':26}{'':>12}{a['val']['runtime']:>14.4f}"]
          if a["val"].get("runtime") is not None else []),
        f"{'test accuracy (ONNX)':26}{'':>12}{a['test']['onnx']:>14.4f}",
        f"{'size (bytes)':26}{_num(s['recorded'], ',.0f'):>12}{s['measured']:>14,}",
        f"{'latency (ms)':26}{_num(lat['recorded'], '.3f'):>12}{lat['measured']:>14.3f}",
        *(f"{name:26}{_num(v['recorded'], ',.0f' if abs(v['recorded']) >= 1000 else '.4g'):>12}"
          f"{_num(v['measured'], ',.0f' if abs(v['measured']) >= 1000 else '.4g'):>14}"
          for name, v in report.get("objectives", {}).items()),
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
    replay_val = p.pipeline.accuracy.of(model)
    steps = fine_tune(p, model, trial.params, epochs)
    artifact = p.pipeline.materialize(model)
    return Replay(study, trial, rule, run_cfg, p, model, artifact, replay_val, {"epochs": epochs, "steps": steps})


def recorded_values(trial: optuna.trial.FrozenTrial, study: optuna.Study) -> dict[str, float]:
    """The trial's values by the study's objective names."""
    return dict(zip(objective_names_of(study), trial.values))


def companions(r: Replay, df) -> Companions:
    """The ONNX models the search stored for the trial and for the uncompressed baseline (the study's artifact
    store; absent for a study written without one), to time the bundle together with (``verify.latency``)."""
    s = r.prepared.setup
    location = s.cfg.study.get("artifacts")
    if location is None and not (s.out_dir / "artifacts").is_dir():
        return Companions()
    trials = {t.number: t for t in r.study.get_trials(deepcopy=False)}
    base = df[(df["baseline"] == "uncompressed") & (df["state"] == "COMPLETE")]
    backend, kept = opened(s.storage), store(s.out_dir, location)
    with tempfile.TemporaryDirectory() as tmp:
        searched = onnx_of(r.trial, kept, Path(tmp), backend)
        number = int(base["number"].iloc[0]) if len(base) else None
        plain = onnx_of(trials[number], kept, Path(tmp), backend) if number is not None and number != r.trial.number \
            else None
    return Companions(searched=searched, uncompressed=plain,
                      uncompressed_ms=float(base["latency_ms"].iloc[0]) if plain is not None else None,
                      between_rel=between_readings(s.out_dir / "remeasured.csv"))


def measurements(r: Replay, folder: Path, tol: Tolerances, df) -> dict[str, Any]:
    """Accuracy, size and latency, recorded by the search (where they are objectives of the study) and measured now
    on the files in ``folder``; every other objective of the study recomputed on the replayed model."""
    s, spread = r.prepared.setup, float(r.trial.user_attrs.get("latency_spread_ms", 0.0))
    recorded = recorded_values(r.trial, r.study)
    measuring = s.cost_model.reference()  # a study searched on a predictor is verified on the real runtime
    acc = accuracies(r.model, folder, splits=s.splits, cost_model=measuring)
    files = files_now(folder, cost_model=measuring)
    others = {o.name: {"recorded": recorded[o.name], "measured": _value(o(Outcome(r.model, r.artifact)))}
              for o in s.objectives if o.name not in ("accuracy", "size_bytes", "latency_ms")}
    return {
        "accuracy": {"val": {"recorded": recorded.get("accuracy"), "pytorch_replay": r.replay_val, **acc["val"]},
                     "test": {"recorded": None, **acc["test"]}},
        "size_bytes": {"recorded": recorded.get("size_bytes"), "measured": files["weights.cpz"]["bytes"],
                       "onnx_bytes": files["model.onnx"]["bytes"]},
        "latency_ms": latency(folder, cost_model=measuring, input_shape=r.artifact.input_shape, tol=tol,
                              recorded=recorded.get("latency_ms"), spread=spread, example=r.artifact.example,
                              companions=companions(r, df) if "latency_ms" in recorded else None),
        "objectives": others,
        "loader": {"max_abs_diff": acc["loader_max_abs_diff"]}, "files": files, **runtime_of(measuring),
    }


def _value(v: Any) -> float:
    return float(v.value_ms if isinstance(v, Measurement) else v)


def student(r: Replay) -> dict[str, Any] | None:
    """A student trial's architecture and training, for the card; None for a trial of the teacher itself."""
    p, params = r.prepared, r.trial.params
    if not p.pipeline.is_student(params):
        return None
    d = p.setup.distillation
    return {"architecture": {k.removeprefix("student."): v for k, v in params.items() if k.startswith("student.")},
            "steps": d.total_steps(len(p.setup.splits.train_x)), "temperature": d.value("temperature", params),
            "alpha": d.value("alpha", params), "ensemble": len(p.setup.teachers) + 1,
            # a family cut from the teacher says how its students start (spaces.DerivedFamily); a fixed one: scratch
            "init": getattr(p.setup.space.family, "init", "scratch")}


def trial_knobs(r: Replay) -> JointSpace | None:
    """The knobs the trial's params belong to: the teacher's, or those built for a student's layers."""
    space, params = r.prepared.setup.space, r.trial.params
    return space.student_knobs(params) if r.prepared.pipeline.is_student(params) else \
        (space.teacher if isinstance(space, StudentSpace) else space)


def knobs_summary(r: Replay) -> dict[str, list[Any]]:
    """{knob: [layers it changed in the built model, what it does]}, for the model card: a layer counts where the
    knob describes a change (an 8-bit input asked for on a layer whose weights stay float changes nothing)."""
    knobs = trial_knobs(r)
    if knobs is None:
        return {}
    reference = reference_model(r)
    return {k.knob: [sum(bool(k.describe(reference.get_submodule(f), r.model.get_submodule(f))) for f in k.layers),
                     k.technique] for k in knobs.knobs}


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
        "input_dtype": input_dtype_of(r.artifact.example),
        "num_classes": p.setup.splits.num_classes, "classes": list(p.setup.splits.classes),
        "normalisation": {"mean": list(p.setup.splits.mean), "std": list(p.setup.splits.std)},
        "onnx_input": "input", "uncompressed": uncompressed(df, p),
        "finetune": r.finetune, "recovery": asdict(p.setup.recovery), "int8_layers": list(r.artifact.int8_layers),
        "student": student(r), "knobs": knobs_summary(r),
        "machine": machine(), "cost_model": p.setup.cost_model.reference().describe(),
        "recorded_cost_model": r.study.user_attrs.get("cost_model"), "versions": versions_now(),
        "study_figures": [f"../../{n}" for n in ("pareto.html", "pareto.png") if (p.setup.out_dir / n).is_file()],
    }


def write_bundle(r: Replay, df, final: Path, tol: Tolerances) -> Picked:
    """Files first, then measured on them, then report.json and README.md; all moved into ``final`` at once."""
    spec = bundle_spec(study=r.study.study_name, number=r.trial.number, baseline=r.trial.user_attrs.get("baseline", ""),
                       params=r.trial.params, input_shape=r.artifact.input_shape, config=r.cfg,
                       structure=structure_of(r.model), input_dtype=input_dtype_of(r.artifact.example))
    with staging(final) as folder:
        write_model_files(folder, r.artifact, spec)
        write_runtime_files(folder, r.prepared.setup.cost_model.reference(), r.artifact)
        report = {**context(r, df), "verified": None, "reasons": [], "tolerances": asdict(tol),
                  **measurements(r, folder, tol, df)}
        report["reasons"] = check(report, tol)
        report["verified"] = not report["reasons"]
        write_json(folder / "report.json", report)
        knobs = trial_knobs(r)
        table = layer_table(reference_model(r), r.model, knobs.knobs if knobs is not None else (), r.artifact.onnx)
        atomic_write(folder / "README.md", card.render(report, table))
    return Picked(final, report, r.model)


def pick(cfg: DictConfig, tol: Tolerances | None = None) -> Picked:
    """Choose a trial by ``cfg.pick``, replay it, write and verify its bundle; see the module docstring.
    PyTorch runs at ``cfg.threads`` threads, restored after."""
    with threads(cfg.threads):
        return _pick(cfg, tol or Tolerances())


def _pick(cfg: DictConfig, tol: Tolerances) -> Picked:
    rule, epochs = Rule.from_cfg(cfg.get("pick")), cfg.get("pick", {}).get("finetune_epochs") or 0
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs < 0:
        raise ValueError(f"pick.finetune_epochs must be a number >= 0, got {epochs!r}")
    study, out_dir = open_recorded(cfg)
    df = trials_frame(study)
    log.info(f"study {study.study_name!r}: the front and the baselines\n{front_table(df).to_string(index=False)}")
    choice = choose(df, rule)
    log.info(f"picked {describe(df[df['number'] == choice.number].iloc[0])}: {choice.reason}")
    location = cfg.study.get("artifacts")
    shared = location is not None or is_server(url_for(cfg.study.storage, results_dir=cfg.results_dir,
                                                       name=str(cfg.study.name)))
    if shared:  # a study of many workers: the teacher and its logits from its artifact store, where missing here
        fetch(study, store(out_dir, location), Path(cfg.results_dir))
    r = replay(study, choice.number, choice.reason, replay_config(cfg, out_dir), float(epochs))
    picked = write_bundle(r, df, out_dir / "picked" / str(choice.number), tol)
    if shared and picked.verified:  # and the bundle into it, for the other hosts
        added = publish(study, store(out_dir, location), Path(cfg.results_dir),
                        sorted(p for p in Path(picked.path).rglob("*") if p.is_file()))
        log.info(f"bundle shared through the study's artifact store ({len(added)} files)")
    announce(picked)
    return picked


def versions_now() -> dict[str, str]:
    import numpy
    import onnx

    return {**versions(), "onnx": onnx.__version__, "numpy": numpy.__version__}


def _pick_and_report(cfg: DictConfig) -> None:
    picked = pick(cfg)
    if not picked.verified:
        print(f"error: bundle {picked.path} written but not verified: {'; '.join(picked.report['reasons'])}",
              file=sys.stderr)
        sys.exit(1)
