"""``run(cfg)``: everything ``python -m search`` does, as a plain function.

All user input is checked before anything is written, so a bad config leaves no trace.
"""
from __future__ import annotations

import inspect
import logging
import platform
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import optuna
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from objectives import Accuracy, BaseCostModel
from spaces import STUDENT, TEACHER, BaseFamily, BaseSpace, JointSpace, StudentSpace, fold_batchnorm

from . import data as data_module
from .baselines import policies
from .outputs import atomic_write, baseline_dominance, students_summary, trials_frame, write_json, write_tables
from .plots import write_pareto_figures
from .report import after_search
from .early_stopping import EarlyStopping
from .pipeline import Distillation, Pipeline, Recovery
from .study import Constraints, enqueue_baselines, fail_interrupted, make_objective, open_study, optimize
from .teacher import build_model, cache_key, cached_logits, ensemble_logits, trained_teacher, weights_key

log = logging.getLogger("search")
CONF = Path(__file__).resolve().parents[1] / "conf"


@dataclass
class Setup:
    cfg: DictConfig
    splits: data_module.Splits
    net: nn.Module
    space: JointSpace
    sampler: optuna.samplers.BaseSampler
    cost_model: BaseCostModel
    recovery: Recovery
    constraints: Constraints
    out_dir: Path
    cache_dir: Path
    storage: str
    distillation: Distillation
    early_stopping: EarlyStopping
    teachers: list[DictConfig]  # distill.teachers: more teachers whose logits students learn from (averaged)


def _first_line(exc: Exception) -> str:
    """The message of the error Hydra wrapped (a constructor's ValueError), on one line."""
    cause = exc.__cause__ or exc
    return str(cause).splitlines()[0] if str(cause) else repr(cause)


def _knob(name: str, knob_cfg: DictConfig, model: nn.Module, input_shape: tuple[int, ...], **override: Any) -> BaseSpace:
    target = knob_cfg.get("_target_")
    try:
        cls = get_class(target)
    except Exception as exc:
        raise ValueError(f"space.knobs.{name}._target_: cannot import {target!r} ({exc})") from exc
    extra: dict[str, Any] = {"model": model, **override}
    if "input_shape" in inspect.signature(cls).parameters:
        extra["input_shape"] = input_shape
    try:
        knob = instantiate(knob_cfg, **extra, _convert_="all")
    except Exception as exc:  # the knobs' own messages already name their keys
        raise ValueError(_first_line(exc)) from exc
    if not isinstance(knob, BaseSpace):
        raise ValueError(f"space.knobs.{name}: {target!r} is not a spaces.BaseSpace")
    return knob


def _family(cfg: DictConfig) -> BaseFamily:
    """The student family: ``space.student.family`` if set, else the model's own (``model.student``)."""
    family_cfg, key = cfg.space.student.get("family"), "space.student.family"
    if family_cfg is None:
        family_cfg, key = cfg.model.get("student"), "model.student"
    if family_cfg is None:
        raise ValueError(f"model.student: model {cfg.model.get('name')!r} names no student family, and space="
                         f"{cfg.space.get('name')} trains students: set model.student or space.student.family "
                         "(a spaces.StudentFamily config, see conf/model/cnn.yaml)")
    try:
        cls = get_class(family_cfg.get("_target_"))
        extra = {"key": key} if "key" in inspect.signature(cls).parameters else {}
        family = instantiate(family_cfg, **extra, _convert_="all")
    except Exception as exc:
        message = _first_line(exc)
        raise ValueError(message if message.startswith(key) else f"{key}: {message}") from exc
    if not isinstance(family, BaseFamily):
        raise ValueError(f"{key}: {family_cfg.get('_target_')!r} is not a spaces.BaseFamily")
    return family


def build_space(cfg: DictConfig, model: nn.Module, input_shape: tuple[int, ...]) -> JointSpace | StudentSpace:
    """The space of ``cfg.space`` for ``model``: its knobs (a ``JointSpace``), behind the choice of a student
    architecture when the space has a ``student`` section (a ``StudentSpace``)."""
    space_cfg = cfg.space
    knob_cfgs = {name: c for name, c in (space_cfg.get("knobs") or {}).items() if c is not None}
    if not knob_cfgs:
        raise ValueError(f"space.knobs: no knob configured in space {space_cfg.get('name')!r}")
    teacher = JointSpace([_knob(name, c, model, input_shape) for name, c in knob_cfgs.items()])
    student_cfg = space_cfg.get("student")
    if student_cfg is None:
        return teacher
    names = list(student_cfg.get("knobs") or [])
    unknown = [n for n in names if n not in knob_cfgs]
    if unknown:
        raise ValueError(f"space.student.knobs: {unknown} not among the knobs of this space {list(knob_cfgs)}")

    def knobs_for(student: nn.Module) -> JointSpace | None:
        # a student's layers have their own names: every layer is eligible, the rest of each knob's config holds
        chosen = [_knob(n, knob_cfgs[n], student, input_shape, include=["*"], exclude=[]) for n in names]
        return JointSpace(chosen) if chosen else None

    arch = space_cfg.get("arch") or [TEACHER, STUDENT]
    return StudentSpace(teacher=teacher, family=_family(cfg), knobs=knobs_for, arch=list(arch),
                        searched=distillation(cfg).searched())


def distillation(cfg: DictConfig) -> Distillation:
    settings = OmegaConf.to_container(cfg.get("distill") or {}, resolve=True)
    settings.pop("teachers", None)
    known = {f.name for f in fields(Distillation)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"distill: unknown key(s) {unknown}; allowed: {sorted(known | {'teachers'})}")
    return Distillation(**settings)


def ensemble_members(cfg: DictConfig, splits: data_module.Splits) -> list[DictConfig]:
    """The extra teachers of ``distill.teachers``: a conf/model option name or a model config each, checked."""
    members = []
    for i, entry in enumerate(cfg.get("distill", {}).get("teachers") or []):
        key = f"distill.teachers[{i}]"
        if isinstance(entry, str):
            path = CONF / "model" / f"{entry}.yaml"
            if not path.is_file():
                options = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
                raise ValueError(f"{key}: no model config {entry!r}; options: {options}, or a model config mapping")
            entry = OmegaConf.create({"model": OmegaConf.load(path)}).model  # resolves ${model.*} within itself
        if not isinstance(entry, DictConfig) or "net" not in entry or "train" not in entry:
            raise ValueError(f"{key}: need a conf/model option name or a mapping with net and train, got {entry!r}")
        member = OmegaConf.create(OmegaConf.to_container(entry, resolve=True))
        member.setdefault("name", f"teacher{i + 1}")
        try:
            build_model(member, splits)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from exc
        members.append(member)
    return members


def _instantiate(cfg: DictConfig, key: str) -> Any:
    try:
        return instantiate(cfg, _convert_="all")
    except Exception as exc:
        raise ValueError(f"{key}: {_first_line(exc)}") from exc


def setup(cfg: DictConfig) -> Setup:
    """Check and build everything from ``cfg``; writes nothing."""
    name = str(cfg.study.name)
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"study.name must be a plain folder name, got {name!r}")
    n_trials = cfg.study.n_trials
    if not isinstance(n_trials, int) or n_trials < 0:
        raise ValueError(f"study.n_trials must be an integer >= 0, got {n_trials!r}")
    results = Path(cfg.results_dir)
    splits = data_module.load(
        root=cfg.data.root, download_dir=cfg.data.get("download_dir"), val_size=cfg.data.val_size, seed=cfg.data.seed
    )
    net = build_model(cfg.model, splits)
    out_dir = results / name
    storage = cfg.study.storage or f"sqlite:///{(out_dir / 'study.db').as_posix()}"
    stopping = OmegaConf.to_container(cfg.get("early_stopping") or {}, resolve=True)
    try:
        early_stopping = EarlyStopping(**stopping)
    except TypeError as exc:
        raise ValueError(f"early_stopping: {exc}; allowed keys: {[f.name for f in fields(EarlyStopping)]}") from exc
    return Setup(
        cfg=cfg, splits=splits, net=net, space=build_space(cfg, net, splits.input_shape),
        sampler=_instantiate(cfg.sampler, "sampler"), cost_model=_instantiate(cfg.hardware, "hardware"),
        recovery=Recovery(**OmegaConf.to_container(cfg.recovery, resolve=True)),
        constraints=Constraints(**OmegaConf.to_container(cfg.study.constraints, resolve=True)),
        out_dir=out_dir, cache_dir=results / "cache", storage=storage,
        distillation=distillation(cfg), early_stopping=early_stopping, teachers=ensemble_members(cfg, splits),
    )


def versions() -> dict[str, str]:
    import onnxruntime
    import torch_pruning

    return {
        "python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__,
        "onnxruntime": onnxruntime.__version__, "torch_pruning": torch_pruning.__version__,
    }


@dataclass
class Prepared:
    """Everything a trial needs: the checked setup, the trained teacher and the trial pipeline."""

    setup: Setup
    teacher: nn.Module
    source: str
    pipeline: Pipeline
    val_accuracy: float
    test_accuracy: float


def prepare(cfg: DictConfig) -> Prepared:
    """Check the config, then get the teacher (trained once, cached) and its logits."""
    torch.set_num_threads(int(cfg.threads))
    s = setup(cfg)
    data_key = cache_key(cfg.data.name, cfg.data.val_size, cfg.data.seed)
    teacher, source = trained_teacher(s.net, cfg.model, data_key, s.splits, s.cache_dir, log=log.info)
    folded = fold_batchnorm(teacher)
    val_acc = Accuracy(images=s.splits.val_x, labels=s.splits.val_y)(folded)
    test_acc = Accuracy(images=s.splits.test_x, labels=s.splits.test_y)(folded)
    log.info(f"teacher {cfg.model.name} ({source}): val {val_acc:.4f}, test {test_acc:.4f}")
    logits = cached_logits(teacher, s.splits.train_x, cache_key(weights_key(teacher), data_key), s.cache_dir)
    student_logits = None
    if s.teachers and isinstance(s.space, StudentSpace):
        student_logits = ensemble_logits(logits, s.teachers, s.splits, data_key, s.cache_dir, log=log.info)
    pipeline = Pipeline(
        teacher=teacher, space=s.space, splits=s.splits, teacher_logits=logits, recovery=s.recovery,
        cost_model=s.cost_model, calibration_samples=int(cfg.calibration_samples),
        distillation=s.distillation, student_logits=student_logits,
    )
    return Prepared(s, teacher, source, pipeline, val_acc, test_acc)


def run(cfg: DictConfig) -> Path:
    started = time.time()
    for noisy in ("kaleido", "choreographer"):  # PNG export logs every browser step at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    p = prepare(cfg)
    s = p.setup
    s.out_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(name=str(cfg.study.name), storage=s.storage, sampler=s.sampler)
    described = s.cost_model.describe()
    recorded = study.user_attrs.get("cost_model")
    keys = ("cost_model", "device", "batch_size", "threads", "runtime", "dtype")
    changed = {k: (recorded[k], described[k]) for k in keys if recorded and k in recorded and k in described
               and recorded[k] != described[k]}
    if changed:
        raise ValueError(
            f"hardware: study {study.study_name!r} holds latencies measured otherwise ({changed}, recorded vs now); "
            "mixing them would compare unlike numbers: choose another study.name"
        )
    study.set_user_attr("cost_model", described)  # which cost model produced the latency objective
    atomic_write(s.out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if (n := fail_interrupted(study)):
        log.info(f"resuming {study.study_name!r}: {n} interrupted trial(s) recorded as FAIL")
    if cfg.study.baselines:
        enqueue_baselines(study, policies(s.space, p.teacher))
    objective = make_objective(p.pipeline, s.space, s.constraints, p.val_accuracy, s.early_stopping)
    optimize(study, objective, n_trials=int(cfg.study.n_trials), timeout_s=cfg.study.timeout_s, log=log.info)

    df = trials_frame(study)
    write_tables(df, s.out_dir)
    title = f"{study.study_name}: {cfg.model.name} on {cfg.data.name}"
    figures = write_pareto_figures(df, s.out_dir, title=title, png=bool(cfg.png))
    dominance = baseline_dominance(df)
    write_json(s.out_dir / "summary.json", {
        "study": study.study_name, "storage": s.storage, "model": cfg.model.name, "teacher_source": p.source,
        "teacher_val_accuracy": p.val_accuracy, "teacher_test_accuracy": p.test_accuracy, "data": s.splits.source,
        "cost_model": s.cost_model.describe(), "versions": versions(), "wall_s": round(time.time() - started, 1),
        "trials": int(len(df)), "front": int(df["on_front"].sum()), "failed": int((df["state"] == "FAIL").sum()),
        "pruned": int((df["state"] == "PRUNED").sum()), **students_summary(df),
        "baselines_dominated_by": dominance,
    })
    after_search(study, cfg, s.out_dir, log=log.info)
    if "png_skipped" in figures:
        log.info(f"pareto.png not written: {figures['png_skipped']}")
    front = df[df["on_front"]].sort_values("accuracy", ascending=False)
    log.info(f"{len(df)} trials, {len(front)} on the front; results in {s.out_dir}/")
    shown = [c for c in ("number", "baseline", "arch", "accuracy", "size_bytes", "latency_ms") if c in front.columns]
    log.info(front[shown].to_string(index=False))
    students = students_summary(df)
    if students.get("student_trials"):
        steps = students["student_train_steps"]
        log.info(f"students: {students['student_trials']} trial(s), {students['student_on_front']} on the front, "
                 f"{students['student_pruned']} stopped early; training steps {steps['done']:,} of {steps['budget']:,} "
                 f"budgeted ({steps['saved_share']:.0%} saved)")
    for name, number in dominance.items():
        log.info(f"baseline {name}: " + (f"weakly dominated by searched trial {number}" if number is not None
                                          else "not dominated by any searched trial"))
    return s.out_dir
