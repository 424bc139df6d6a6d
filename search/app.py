"""From a config to the objects a search runs with: the data, the model, the space, the sampler, the cost model,
the objectives and the pipeline of one trial. ``setup`` checks everything and writes nothing; ``prepare`` adds
the trained teacher (trained once, cached) and its logits."""
from __future__ import annotations

import inspect
import logging
import platform
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import optuna
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

import objectives
from objectives import Accuracy, BaseObjective
from objectives.hardware import BaseCostModel
from objectives.hardware.cpu import torch_threads
from spaces import (
    INT4_CHOICES, STUDENT, TEACHER, BaseFamily, BaseKnob, JointSpace, StudentSpace, fold_batchnorm, one_line,
)
from spaces.probe import keep, probe, said, without

from . import data as data_module
from ._checks import whole, CONF
from .pipeline import Distillation, Pipeline, Recovery
from .loop.screening import Screening
from .storage.backends import url_for
from .sensitivity.plan import settings as sensitivity_settings
from .loop.study import Constraints
from .training.early_stopping import EarlyStopping
from .training.teacher import (
    build_model, cache_key, cached_logits, check_learned, ensemble_logits, logits_path, teacher_path, trained_teacher,
    weights_key,
)

log = logging.getLogger("search")



@dataclass
class Setup:
    """Everything built and checked from a config, before anything is trained or written (``setup(cfg)``)."""

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
    objectives: list[BaseObjective]  # ``objectives=[...]``, in the study's order
    screening: Screening  # ``screening.*``: multi-fidelity (search/loop/screening.py)


_SAID = (ValueError, FileNotFoundError)  # raised on purpose, for bad input: their messages are the user's


def _keyed(key: str, exc: Exception) -> str:
    """The error Hydra wrapped (a constructor's), on one line naming ``key``: bad input (a ValueError or a missing
    file) by its message, which most often names the key already; anything else (a failure inside, such as
    Torch-Pruning's ZeroDivisionError on a model it cannot trace) with its type and the set-up step."""
    cause = exc.__cause__ or exc
    if not isinstance(cause, _SAID):
        return f"setup: {key}: {one_line(cause)}"
    message = str(cause).splitlines()[0] if str(cause) else repr(cause)
    return message if message.startswith(key) else f"{key}: {message}"


@contextmanager
def _step(name: str) -> Iterator[None]:
    """Any exception of the set-up step ``name`` as the one line bad input is (``search.cli``: exit status 2):
    ``setup: model: RuntimeError: ...``; bad input (``_SAID``) passes as it is, naming its key."""
    try:
        yield
    except _SAID:
        raise
    except Exception as exc:
        raise ValueError(f"setup: {name}: {one_line(exc)}") from exc


def _accepted(cls: type, **candidates: Any) -> dict[str, Any]:
    """The keyword arguments of ``candidates`` that ``cls``'s constructor takes (what the app knows and a plug-in
    may want: the model, its input's shape and dtype, ...)."""
    return {k: v for k, v in candidates.items() if k in inspect.signature(cls).parameters}


def _knob(name: str, knob_cfg: DictConfig, model: nn.Module, input_shape: tuple[int, ...], input_dtype: str = "float32",
          **override: Any) -> BaseKnob:
    target = knob_cfg.get("_target_")
    try:
        cls = get_class(target)
    except Exception as exc:
        raise ValueError(f"space.knobs.{name}._target_: cannot import {target!r} ({exc})") from exc
    extra = {"model": model, **_accepted(cls, input_shape=input_shape, input_dtype=input_dtype), **override}
    try:
        knob = instantiate(knob_cfg, **extra, _convert_="all")
    except Exception as exc:
        raise ValueError(_keyed(f"space.knobs.{name}", exc)) from exc
    if not isinstance(knob, BaseKnob):
        raise ValueError(f"space.knobs.{name}: {target!r} is not a spaces.BaseKnob")
    if knob.knob != name:
        raise ValueError(f"space.knobs.{name}: {target!r} is the {knob.knob!r} knob; configure it as "
                         f"space.knobs.{knob.knob}")
    return knob


FAMILIES = CONF / "space" / "family"  # ``space.student.family=<name>``: a family config of this folder


def _family_config(cfg: DictConfig) -> tuple[DictConfig, str]:
    """The student family's config and its key: ``space.student.family`` (a config, or the name of one under
    conf/space/family/), else the model's own (``model.student``)."""
    family_cfg, key = cfg.space.student.get("family"), "space.student.family"
    if isinstance(family_cfg, str):
        path = FAMILIES / f"{family_cfg}.yaml"
        if not path.is_file():
            options = sorted(p.stem for p in FAMILIES.glob("*.yaml"))
            raise ValueError(f"{key}: no family config {family_cfg!r}; options: {options}, or a family config mapping")
        # resolves ${model.*} from the study's model
        node = OmegaConf.create({"model": OmegaConf.to_container(cfg.model, resolve=True), "family": OmegaConf.load(path)})
        return node.family, key
    if family_cfg is None:
        family_cfg, key = cfg.model.get("student"), "model.student"
    if family_cfg is None:
        raise ValueError(f"model.student: model {cfg.model.get('name')!r} names no student family, and space="
                         f"{cfg.space.get('name')} trains students: set model.student or space.student.family "
                         "(a spaces.StudentFamily config, see conf/model/cnn.yaml, or 'derived')")
    return family_cfg, key


def _family(cfg: DictConfig, model: nn.Module, input_shape: tuple[int, ...], input_dtype: str,
            calibration: torch.Tensor | None, cache: Path | None = None) -> BaseFamily:
    """The student family (``_family_config``), given what a family cut from the teacher needs: the teacher
    ``model`` (trained in place later), its input, ``calibration`` inputs, ``space.student.init`` and ``cache``, the
    file its importance ranking is kept in (``results/<study>/importance.csv``)."""
    family_cfg, key = _family_config(cfg)
    init = cfg.space.student.get("init", "inherit")
    try:
        cls = get_class(family_cfg.get("_target_"))
        extra = _accepted(cls, key=key, model=model, input_shape=input_shape, input_dtype=input_dtype, init=init,
                          calibration=calibration, cache=cache)
        family = instantiate(family_cfg, **extra, _convert_="all")
    except Exception as exc:
        raise ValueError(_keyed(key, exc)) from exc
    if not isinstance(family, BaseFamily):
        raise ValueError(f"{key}: {family_cfg.get('_target_')!r} is not a spaces.BaseFamily")
    return family


def build_space(cfg: DictConfig, model: nn.Module, input_shape: tuple[int, ...],
                cache_dir: Path | None = None, input_dtype: str = "float32",
                calibration: torch.Tensor | None = None, importance: Path | None = None) -> JointSpace | StudentSpace:
    """The space of ``cfg.space`` for ``model``: its knobs (a ``JointSpace``), behind the choice of a student
    architecture when the space has a ``student`` section (a ``StudentSpace``). ``cache_dir``: where the probe of
    the knobs on ``model`` is kept for later processes (``<cache_dir>/probe/``); ``input_dtype``: the data's
    (``Splits.input_dtype``: int64 for token ids); ``calibration``: inputs a family cut from ``model`` ranks its
    blocks on (``spaces.DerivedFamily``; a rebuilt bundle gives none: it drops the blocks it stores), and
    ``importance`` the file it keeps that ranking in."""
    space_cfg = cfg.space
    knob_cfgs = {name: c for name, c in (space_cfg.get("knobs") or {}).items() if c is not None}
    if not knob_cfgs:
        raise ValueError(f"space.knobs: no knob configured in space {space_cfg.get('name')!r}")
    teacher = JointSpace([_knob(name, c, model, input_shape, input_dtype) for name, c in knob_cfgs.items()])
    # layers where a knob breaks this model: left out, and said
    broken = probe(teacher, model, input_shape, cache=Path(cache_dir) / "probe" if cache_dir is not None else None,
                   input_dtype=input_dtype)
    teacher = without(teacher, broken)
    for line in said(teacher):
        (log.warning if any(line.startswith(f"space.knobs.{k}:") for k in broken) else log.info)(line)
    student_cfg = space_cfg.get("student")
    if student_cfg is None:
        return teacher
    names = list(student_cfg.get("knobs") or [])
    unknown = [n for n in names if n not in knob_cfgs]
    if unknown:
        raise ValueError(f"space.student.knobs: {unknown} not among the knobs of this space {list(knob_cfgs)}")

    def knobs_for(student: nn.Module) -> JointSpace | None:
        # a student's layers have their own names: every layer is eligible, the rest of each knob's config holds
        chosen = [_knob(n, knob_cfgs[n], student, input_shape, input_dtype, include=["*"], exclude=[]) for n in names]
        return JointSpace(chosen) if chosen else None

    arch = space_cfg.get("arch") or [TEACHER, STUDENT]
    family = _family(cfg, model, input_shape, input_dtype, calibration, importance)
    return StudentSpace(teacher=teacher, family=family, knobs=knobs_for, arch=list(arch),
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
            # resolves ${model.*} within itself and ${data.*} from the splits
            entry = OmegaConf.create({"model": OmegaConf.load(path), "data": data_facts(splits)}).model
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


def instantiated(cfg: DictConfig, key: str) -> Any:
    try:
        return instantiate(cfg, _convert_="all")
    except Exception as exc:
        raise ValueError(_keyed(key, exc)) from exc


def threads(n: int) -> AbstractContextManager[None]:
    """PyTorch's (process-wide) thread count set to ``n`` for the duration, then restored (``threads=`` in the
    config: training and evaluation; latency is timed at the cost model's own thread count)."""
    return torch_threads(whole("threads", n, 1))


def objective_names(cfg: DictConfig) -> list[str]:
    names = cfg.get("objectives")
    names = list(names) if names is not None and not isinstance(names, str) else names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"objectives must be a list of objective names, e.g. [accuracy,latency_ms], got {names!r}; "
                         f"known: {sorted(objectives.BaseObjective.registry)}")
    for name in names:
        objectives.objective_class(name)
    return names


def data_facts(splits: data_module.Splits) -> dict[str, int]:
    """What the model configs read from the data: ``${data.num_classes}``, ``${data.channels}``."""
    return {key: getattr(splits, key) for key in data_module.FROM_DATA}


def load_data(cfg: DictConfig) -> data_module.Splits:
    """The splits of ``cfg.data``; ``data.num_classes`` and ``data.channels`` filled from them where null (the
    data module has checked any value given), so the model configs' ``${data.*}`` resolve to the data's own."""
    splits = data_module.build(cfg.data).splits()
    with open_dict(cfg):
        for key, value in data_facts(splits).items():
            cfg.data[key] = value
    return splits


def setup(cfg: DictConfig) -> Setup:
    """Check and build everything from ``cfg``; writes nothing."""
    name = str(cfg.study.name)
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"study.name must be a plain folder name, got {name!r}")
    names = objective_names(cfg)
    n_trials = cfg.study.n_trials
    if not isinstance(n_trials, int) or n_trials < 0:
        raise ValueError(f"study.n_trials must be an integer >= 0, got {n_trials!r}")
    cost_model = instantiated(cfg.hardware, "hardware")  # before the data: a missing runtime is told at once
    results = Path(cfg.results_dir)
    with _step("data"):
        splits = load_data(cfg)  # the model is sized for the data
    with _step("model"):
        net = build_model(cfg.model, splits)
    out_dir = results / name
    stopping = OmegaConf.to_container(cfg.get("early_stopping") or {}, resolve=True)
    try:
        early_stopping = EarlyStopping(**stopping)
    except TypeError as exc:
        raise ValueError(f"early_stopping: {exc}; allowed keys: {[f.name for f in fields(EarlyStopping)]}") from exc
    with _step("study.constraints"):
        constraints = Constraints(**OmegaConf.to_container(cfg.study.constraints, resolve=True))
        constraints.check(names)
    sensitivity_settings(cfg)  # sensitivity.*, anchors.*, guided.*: checked before anything runs
    try:
        screening = Screening(**OmegaConf.to_container(cfg.get("screening") or {}, resolve=True))
    except TypeError as exc:
        raise ValueError(f"screening: {exc}; allowed keys: {[f.name for f in fields(Screening)]}") from exc
    onnx_int4(cfg)
    workers = whole("study.workers", cfg.study.get("workers", 1), 1)
    for key in ("heartbeat_interval", "grace_period"):
        whole(f"study.{key}", cfg.study.get(key, 1), 1)
    whole("study.retries", cfg.study.get("retries", 0), 0)
    whole("study.worker", cfg.study.get("worker") or 0, 0)
    storage = url_for(cfg.study.storage, results_dir=results, name=name, workers=workers)
    with _step("space"):  # the knobs' and the probe's own errors name the knob, the layer and the choice
        space = build_space(cfg, net, splits.input_shape, results / "cache", splits.input_dtype,
                            splits.train_x[:int(cfg.calibration_samples)], importance=out_dir / "importance.csv")
    with _step("recovery"):
        recovery = Recovery(**OmegaConf.to_container(cfg.recovery, resolve=True))
    with _step("distill.teachers"):
        teachers = ensemble_members(cfg, splits)
    with _step("objectives"):
        measures = objectives.build(names, images=splits.val_x, labels=splits.val_y, cost_model=cost_model,
                                    input_shape=splits.input_shape)
    return Setup(
        cfg=cfg, splits=splits, net=net, space=space, sampler=instantiated(cfg.sampler, "sampler"),
        cost_model=cost_model, recovery=recovery, constraints=constraints, out_dir=out_dir,
        cache_dir=results / "cache", storage=storage, distillation=distillation(cfg), early_stopping=early_stopping,
        teachers=teachers, objectives=measures, screening=screening,
    )


def onnx_int4(cfg: DictConfig) -> str:
    """``onnx_int4``, checked: which layers at <= 4 bits the ONNX model stores at 4 bits (spaces.INT4_CHOICES)."""
    value = cfg.get("onnx_int4", "none")
    if value not in INT4_CHOICES:
        raise ValueError(f"onnx_int4 must be one of {list(INT4_CHOICES)}, got {value!r}")
    return value


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
    files: list[Path]  # the cache files it read or wrote (teachers, logits): what workers elsewhere fetch


def prepare(cfg: DictConfig, checked: Setup | None = None, *, test: bool = True) -> Prepared:
    """Check the config (or take ``checked``, its ``setup``), then get the teacher (trained once, cached), refuse it
    if its validation accuracy is within noise of chance (``check_learned``: before any logits or trial), and get
    its logits. The caches are keyed by the data's fingerprint (its contents and split), not its name."""
    s = checked or setup(cfg)
    keep(s.cache_dir / "probe")  # the config passed: what the probe found is kept for later processes
    data_key = s.splits.fingerprint
    with _step("teacher"):
        teacher, source = trained_teacher(s.net, cfg.model, data_key, s.splits, s.cache_dir, log=log.info)
        folded = fold_batchnorm(teacher)
    val_acc = Accuracy(images=s.splits.val_x, labels=s.splits.val_y).of(folded)
    check_learned(val_acc, s.splits.val_y, cfg.model, source)  # before any trial, logits or output
    # test: False for a worker that writes no outputs (the test split is read only by the summary and the card)
    test_acc = Accuracy(images=s.splits.test_x, labels=s.splits.test_y).of(folded) if test else float("nan")
    log.info(f"teacher {cfg.model.name} ({source}): val {val_acc:.4f}" + (f", test {test_acc:.4f}" if test else ""))
    key = cache_key(weights_key(teacher), data_key)
    with _step("teacher logits"):
        logits = cached_logits(teacher, s.splits.train_x, key, s.cache_dir)
    files = [logits_path(key, s.cache_dir)] + ([] if cfg.model.get("checkpoint") else
                                               [teacher_path(cfg.model, data_key, s.cache_dir, teacher)])
    student_logits = None
    if s.teachers and isinstance(s.space, StudentSpace):
        student_logits = ensemble_logits(logits, s.teachers, s.splits, data_key, s.cache_dir, log=log.info,
                                         used=files)
    pipeline = Pipeline(
        teacher=teacher, space=s.space, splits=s.splits, teacher_logits=logits, recovery=s.recovery,
        cost_model=s.cost_model, objectives=s.objectives, calibration_samples=int(cfg.calibration_samples),
        distillation=s.distillation, student_logits=student_logits, onnx_int4=onnx_int4(cfg),
    )
    return Prepared(s, teacher, source, pipeline, val_acc, test_acc, files)


