"""One trial as data flowing through: params -> model -> recovered model -> artifact -> values."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from objectives import Accuracy, ArtifactSize, BaseCostModel, Measurement, count_macs, count_params
from spaces import Artifact, JointSpace, calibrate, materialize, to_plain

from .data import Splits
from .train import recover


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


@dataclass
class Evaluation:
    accuracy: float
    size_bytes: int
    latency: Measurement
    params: int
    nonzero_params: int
    macs: int
    int8_layers: int
    seconds: dict[str, float] = field(default_factory=dict)

    def attrs(self) -> dict[str, Any]:
        """What a trial records beside its three values."""
        # accuracy and size are the trial's values already; only what they don't hold goes here
        out = {k: v for k, v in asdict(self).items() if k not in ("accuracy", "size_bytes", "latency", "seconds")}
        out["latency_spread_ms"] = self.latency.spread_ms
        out.update({f"seconds_{k}": round(v, 3) for k, v in self.seconds.items()})
        return out


class Pipeline:
    def __init__(
        self, *, teacher: nn.Module, space: JointSpace, splits: Splits, teacher_logits: torch.Tensor,
        recovery: Recovery, cost_model: BaseCostModel, calibration_samples: int = 256,
    ) -> None:
        self.teacher, self.space, self.splits = teacher, space, splits
        self.teacher_logits, self.recovery, self.cost_model = teacher_logits, recovery, cost_model
        self.calibration = splits.train_x[:calibration_samples]
        self.accuracy = Accuracy(images=splits.val_x, labels=splits.val_y)
        self.size = ArtifactSize()

    def _recover(self, model: nn.Module, *, steps: int, lr: float) -> None:
        r = self.recovery
        recover(
            model, self.splits.train_x, self.splits.train_y, self.teacher_logits, steps=steps, lr=lr,
            batch_size=r.batch_size, temperature=r.temperature, alpha=r.alpha, seed=r.seed,
        )

    def build(self, params: dict[str, Any]) -> nn.Module:
        """The compressed, calibrated and recovered model of ``params``: the same every time.

        This is ``space.apply(teacher, params)`` with recovery fine-tunes between its halves.
        """
        torch.manual_seed(self.recovery.seed)
        model = self.space.apply_structure(self.teacher, params)
        if self.space.changes_structure(params):
            self._recover(model, steps=self.recovery.steps, lr=self.recovery.lr)
        model = self.space.finish(model, params)
        calibrate(model, self.calibration.split(128))
        if self.space.quantizes(params) and self.recovery.qat_steps:
            self._recover(model, steps=self.recovery.qat_steps, lr=self.recovery.qat_lr)
        return model.eval()

    def materialize(self, model: nn.Module) -> Artifact:
        return materialize(model, input_shape=self.splits.input_shape, calibration=self.calibration.numpy())

    def evaluate(self, params: dict[str, Any]) -> Evaluation:
        seconds: dict[str, float] = {}

        @contextmanager
        def stage(name: str):
            start = time.perf_counter()
            yield
            seconds[name] = time.perf_counter() - start

        with stage("build"):
            model = self.build(params)
        with stage("accuracy"):
            accuracy = self.accuracy(model)
        with stage("materialize"):
            artifact = self.materialize(model)
            plain = to_plain(model)
        with stage("latency"):
            latency = self.cost_model.latency_ms(artifact)
        total, nonzero = count_params(plain)
        return Evaluation(
            accuracy=accuracy, size_bytes=int(self.size(artifact)), latency=latency, params=total,
            nonzero_params=nonzero, macs=count_macs(plain, self.splits.input_shape),
            int8_layers=len(artifact.int8_layers), seconds=seconds,
        )
