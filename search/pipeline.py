"""One trial as data flowing through: params -> model -> recovered model -> artifact -> values."""
from __future__ import annotations

import time
from contextlib import contextmanager
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from objectives import Accuracy, BaseObjective, Outcome, count_macs, count_params
from objectives.hardware import BaseCostModel, Measurement
from spaces import Artifact, JointSpace, StudentSpace, calibrate, materialize, to_plain

from .data import Splits
from .training.early_stopping import Monitor
from .training.loops import distill, recover


@dataclass(frozen=True)
class Recovery:
    """The short distillation fine-tune of a trial, in two phases (0 steps turns a phase off).

    ``steps`` at ``lr`` after the structural changes (channels, rank, sparsity) with BatchNorm still
    in place; then, once BN is folded and the layers quantized, ``qat_steps`` of quantization-aware
    fine-tuning at the lower ``qat_lr``. A phase with nothing to recover is skipped.
    """

    steps: int = 300
    lr: float = 0.05
    qat_steps: int = 100
    qat_lr: float = 0.005
    batch_size: int = 128
    temperature: float = 4.0
    alpha: float = 0.7
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.steps, self.qat_steps) < 0 or self.batch_size < 1 or min(self.lr, self.qat_lr) <= 0:
            raise ValueError(f"recovery: need steps, qat_steps >= 0, batch_size >= 1, lr, qat_lr > 0, got {self}")
        if self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise ValueError(f"recovery: need temperature > 0 and alpha in [0, 1], got {self}")


@dataclass(frozen=True)
class Distillation:
    """How a student trial trains from the teacher (``distill.*`` in the config; ``search/training/loops.py: distill``).

    The budget is ``steps`` batches, or ``epochs`` passes over the training split when ``steps`` is None.
    ``temperature``, ``alpha``, ``epochs`` and ``steps`` are numbers, or lists of choices the search samples per
    student trial (``distill.<key>``: a student's budget is then a searched setting, its cost in time weighed by
    the sampler against what it buys).
    """

    epochs: float | tuple[float, ...] = 1.0
    steps: int | tuple[int, ...] | None = None
    lr: float = 0.1
    batch_size: int = 128
    temperature: float | tuple[float, ...] = 4.0
    alpha: float | tuple[float, ...] = 0.7
    seed: int = 0

    SEARCHABLE = ("temperature", "alpha", "epochs", "steps")

    def __post_init__(self) -> None:
        for key in self.SEARCHABLE:
            value = getattr(self, key)
            if isinstance(value, (list, tuple)):
                if not value:
                    raise ValueError(f"distill.{key} must be a number or a non-empty list of numbers, got []")
                if key == "steps":
                    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or v < 1]
                    if bad:
                        raise ValueError(f"distill.steps: {bad} not integers >= 1 (a list of step budgets)")
                    object.__setattr__(self, key, tuple(int(v) for v in value))
                    continue
                if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
                    raise ValueError(f"distill.{key} must be a number or a list of numbers, got {list(value)!r}")
                object.__setattr__(self, key, tuple(float(v) for v in value))
            elif key != "steps" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"distill.{key} must be a number or a list of numbers, got {value!r}")
        if min(self.choices("temperature")) <= 0:
            raise ValueError(f"distill.temperature must be > 0, got {self.temperature!r}")
        if any(not 0 <= a <= 1 for a in self.choices("alpha")):
            raise ValueError(f"distill.alpha must be in [0, 1], got {self.alpha!r}")
        if not isinstance(self.steps, tuple) and self.steps is not None and (
                isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"distill.steps must be an integer >= 1, a list of them, or null, got {self.steps!r}")
        if self.steps is None and min(self.choices("epochs")) <= 0:
            raise ValueError(f"distill.epochs must be > 0 (or set distill.steps), got {self.epochs!r}")
        if self.lr <= 0 or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"distill: need lr > 0 and batch_size >= 1, got lr={self.lr!r}, batch_size={self.batch_size!r}")

    def choices(self, key: str) -> tuple[float, ...]:
        value = getattr(self, key)
        return tuple(value) if isinstance(value, tuple) else (float(value),)

    def searched(self) -> dict[str, tuple[float, ...]]:
        """The settings given as lists: the search samples them (``distill.<key>``); ``epochs`` only where no
        ``steps`` overrides it."""
        return {k: getattr(self, k) for k in self.SEARCHABLE if isinstance(getattr(self, k), tuple)
                and not (k == "epochs" and self.steps is not None)}

    def chosen(self, key: str, params: Mapping[str, Any]) -> Any:
        """A trial's setting: its sampled value when searched, else the configured one."""
        return params[f"distill.{key}"] if isinstance(getattr(self, key), tuple) else getattr(self, key)

    def value(self, key: str, params: Mapping[str, Any]) -> float:
        """A trial's temperature or alpha (``chosen``, as a float)."""
        return float(self.chosen(key, params))

    def total_steps(self, n_train: int, params: Mapping[str, Any] | None = None) -> int:
        """A trial's budget in batches (``params``: its sampled settings, where the budget is searched)."""
        steps = self.chosen("steps", params or {})
        if steps is not None:
            return int(steps)
        return max(1, round(float(self.chosen("epochs", params or {})) * n_train / self.batch_size))


@dataclass
class Evaluation:
    """What one trial produced: its objective values by name, and what it records beside them."""

    values: dict[str, float]
    params: int
    nonzero_params: int
    macs: int
    int8_layers: int
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # the objectives' own attributes (a latency's spread)
    onnx: bytes | None = field(default=None, repr=False)  # the artifact's ONNX model (kept for a later re-timing)
    files: dict[str, bytes] = field(default_factory=dict, repr=False)  # and the runtime's own, where it needs them

    def attrs(self) -> dict[str, Any]:
        """What a trial records beside its values."""
        out = {k: v for k, v in asdict(self).items() if k not in ("values", "seconds", "extra", "onnx", "files")}
        out.update(self.extra)
        out.update({f"seconds_{k}": round(v, 3) for k, v in self.seconds.items()})
        return out


class Pipeline:
    """One trial from params to values. A teacher trial: compress, recover, fold, quantize, fine-tune. A student
    trial: the untrained student with its compression, its size and latency measured first (they depend on the
    structure only), trained by distillation (``monitor`` may stop it), then folded, quantized, fine-tuned."""

    def __init__(
        self, *, teacher: nn.Module, space: JointSpace | StudentSpace, splits: Splits, teacher_logits: torch.Tensor,
        recovery: Recovery, cost_model: BaseCostModel, objectives: list[BaseObjective],
        calibration_samples: int = 256, distillation: Distillation | None = None,
        student_logits: torch.Tensor | None = None, onnx_int4: str = "none",
    ) -> None:
        self.teacher, self.space, self.splits = teacher, space, splits
        self.onnx_int4 = onnx_int4  # which <= 4-bit layers the ONNX model stores at 4 bits (spaces.INT4_CHOICES)
        self.teacher_logits, self.recovery, self.cost_model = teacher_logits, recovery, cost_model
        self.objectives = list(objectives)
        self.distillation = distillation or Distillation()
        # an ensemble's averaged logits when several teachers are given; the model's own otherwise
        self.student_logits = student_logits if student_logits is not None else teacher_logits
        self.calibration = splits.train_x[:calibration_samples]
        self.accuracy = Accuracy(images=splits.val_x, labels=splits.val_y)  # recorded beside any objectives

    def at_low_fidelity(self, *, steps: int, qat_steps: int) -> Pipeline:
        """The same pipeline with ``steps`` + ``qat_steps`` of recovery and the cost model's short protocol: the
        screening fidelity (``search/loop/screening.py``)."""
        import copy

        import objectives

        low = copy.copy(self)
        low.recovery = replace(self.recovery, steps=steps, qat_steps=qat_steps)
        low.cost_model = self.cost_model.quick(warmup=3, repeats=15) if self.cost_model.measures else self.cost_model
        low.objectives = objectives.build([o.name for o in self.objectives], images=self.splits.val_x,
                                          labels=self.splits.val_y, cost_model=low.cost_model,
                                          input_shape=self.splits.input_shape)
        return low

    def is_student(self, params: Mapping[str, Any]) -> bool:
        return isinstance(self.space, StudentSpace) and self.space.is_student(params)

    def _recover(self, model: nn.Module, *, steps: int, lr: float, params: Mapping[str, Any]) -> None:
        r = self.recovery
        if self.is_student(params):  # a student keeps learning from its own teacher(s), at its own T and alpha
            d = self.distillation
            logits, temperature, alpha = self.student_logits, d.value("temperature", params), d.value("alpha", params)
        else:
            logits, temperature, alpha = self.teacher_logits, r.temperature, r.alpha
        recover(
            model, self.splits.train_x, self.splits.train_y, logits, steps=steps, lr=lr,
            batch_size=r.batch_size, temperature=temperature, alpha=alpha, seed=r.seed,
        )

    def train_student(self, model: nn.Module, params: Mapping[str, Any], monitor: Monitor | None = None) -> float:
        """Distill the student in place; returns the seconds it took. ``monitor`` scores it at its checkpoints."""
        d, s = self.distillation, self.splits
        total = d.total_steps(len(s.train_x), params)
        checkpoints: dict[int, float] = monitor.rule.steps(total) if monitor is not None else {}
        subset = Accuracy(images=s.val_x[: monitor.rule.val_subset], labels=s.val_y[: monitor.rule.val_subset]) \
            if monitor is not None else None
        start = time.perf_counter()

        def scored(step: int, m: nn.Module) -> None:
            monitor.check(step=step, total_steps=total, fraction=checkpoints[step], accuracy=subset.of(m),
                          seconds=time.perf_counter() - start)

        distill(
            model, s.train_x, s.train_y, self.student_logits, steps=total, lr=d.lr, batch_size=d.batch_size,
            temperature=d.value("temperature", params), alpha=d.value("alpha", params), seed=d.seed,
            checkpoints=tuple(checkpoints), on_checkpoint=scored if monitor is not None else None,
        )
        return time.perf_counter() - start

    def build(self, params: dict[str, Any], monitor: Monitor | None = None,
              seconds: dict[str, float] | None = None) -> nn.Module:
        """The compressed, calibrated and recovered (or, for a student, trained) model of ``params``: the same
        every time (``monitor`` only scores, it changes nothing, unless it stops the trial).

        This is ``space.apply(teacher, params)`` with training between its halves.
        """
        torch.manual_seed(self.recovery.seed)
        model = self.space.apply_structure(self.teacher, params)
        if self.is_student(params):
            took = self.train_student(model, params, monitor)
            if seconds is not None:
                seconds["train"] = took
        elif self.space.changes_structure(params):
            self._recover(model, steps=self.recovery.steps, lr=self.recovery.lr, params=params)
        model = self.space.finish(model, params)
        calibrate(model, self.calibration.split(128))
        if self.space.quantizes(params) and self.recovery.qat_steps:
            self._recover(model, steps=self.recovery.qat_steps, lr=self.recovery.qat_lr, params=params)
        return model.eval()

    def untrained(self, params: dict[str, Any]) -> nn.Module:
        """``space.apply(teacher, params)`` calibrated, no training: a student's final structure, untrained."""
        torch.manual_seed(self.recovery.seed)
        model = self.space.apply(self.teacher, params)
        calibrate(model, self.calibration.split(128))
        return model.eval()

    def materialize(self, model: nn.Module) -> Artifact:
        return materialize(model, input_shape=self.splits.input_shape, calibration=self.calibration.numpy(),
                           int4=self.onnx_int4)

    def measure(self, objectives: list[BaseObjective], outcome: Outcome, values: dict[str, float],
                extra: dict[str, Any]) -> None:
        """Each objective's value of ``outcome`` into ``values`` (a measurement's median), its attributes into
        ``extra``."""
        for objective in objectives:
            value = objective(outcome)
            values[objective.name] = float(value.value_ms if isinstance(value, Measurement) else value)
            extra.update(objective.attrs(value))

    def evaluate(self, params: dict[str, Any], monitor: Monitor | None = None) -> Evaluation:
        seconds: dict[str, float] = {}
        values: dict[str, float] = {}
        extra: dict[str, Any] = {}

        @contextmanager
        def stage(name: str):
            start = time.perf_counter()
            yield
            seconds[name] = time.perf_counter() - start

        structural = [o for o in self.objectives if o.structural]
        student = self.is_student(params)
        if student:
            # The structural objectives (size, latency, ...) depend on the structure only: measured before
            # training (early stopping needs them) on the untrained student, and kept as the trial's values (the
            # trained one has the same graph).
            with stage("latency"):
                untrained = self.untrained(params)
                early = self.materialize(untrained)
                self.measure(structural, Outcome(untrained, early), values, extra)
            if monitor is not None:
                monitor.start(values={o.name: values[o.name] for o in structural},
                              total_steps=self.distillation.total_steps(len(self.splits.train_x), params))
        with stage("build"):
            model = self.build(params, monitor, seconds)
        with stage("materialize"):
            artifact = self.materialize(model)
            plain = to_plain(model)
        outcome = Outcome(model, artifact)
        with stage("accuracy"):
            self.measure([o for o in self.objectives if not o.structural], outcome, values, extra)
        if not student:
            with stage("latency"):
                self.measure(structural, outcome, values, extra)
        else:
            assert len(artifact.packed) == len(early.packed), "a student's size changed in training"
        files = self.cost_model.kept_files(early if student else artifact)  # the program it timed
        total, nonzero = count_params(plain)
        return Evaluation(
            values=values, params=total, nonzero_params=nonzero, macs=count_macs(plain, self.splits.input_shape),
            int8_layers=len(artifact.int8_layers), seconds=seconds, extra=extra, onnx=artifact.onnx, files=files,
        )
