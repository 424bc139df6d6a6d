"""The contract every objective honours. Each objective's test (``tests/objectives/test_<name>.py`` or a class in
``test_objectives.py``) subclasses ``ObjectiveContract`` and sets ``name``; the objective is built as the search
builds it (``objectives.build``) and called on what a real trial produces (``Outcome``: the compressed model and
its artifact), on a small toy model and on a compressed copy of it."""
from __future__ import annotations

import json
import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import objectives
import spaces
from objectives import BaseObjective, Outcome
from objectives.hardware import Measurement, OrtCpuCostModel

SHAPE = (1, 1, 16, 16)


def toy_outcome(width: int, *, compressed: bool = False) -> Outcome:
    torch.manual_seed(width)
    model = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(width * 8 * 8, 10)).eval()
    x = torch.randn(32, *SHAPE[1:], generator=torch.Generator().manual_seed(1))
    if compressed:
        space = spaces.JointSpace([spaces.ChannelKnob(model=model, input_shape=SHAPE), spaces.BitsKnob(model=model)])
        model = space.apply(model, space.with_values(channels=space["channels"].uniform(0.5),
                                                     bits=space["bits"].uniform(4)))
    spaces.calibrate(model, [x])
    return Outcome(model.eval(), spaces.materialize(model, input_shape=SHAPE, calibration=x.numpy()))


class ObjectiveContract:
    """Subclass as ``class TestMyObjective(ObjectiveContract)`` and set ``name``."""

    name: ClassVar[str]

    @pytest.fixture
    def objective(self) -> BaseObjective:
        labels = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
        images = torch.randn(64, *SHAPE[1:], generator=torch.Generator().manual_seed(2))
        cost = OrtCpuCostModel(batch_size=8, threads=1, warmup=1, repeats=5, settle_s=0, retries=0)
        return objectives.build([self.name], images=images, labels=labels, cost_model=cost, input_shape=SHAPE)[0]

    def test_declares_name_direction_unit_and_how_it_is_drawn(self, objective):
        cls = type(objective)
        assert BaseObjective.registry[self.name] is cls and cls.name == self.name
        assert cls.direction in ("maximize", "minimize") and cls.label and cls.display > 0
        assert cls.relative or cls.direction == "maximize"  # an absolute objective is a fraction to maximise
        json.dumps({"name": cls.name, "unit": cls.unit, "label": cls.label})

    def test_value_of_a_real_outcome_is_a_finite_number(self, objective):
        for outcome in (toy_outcome(8), toy_outcome(8, compressed=True)):
            value = objective(outcome)
            number = value.value_ms if isinstance(value, Measurement) else value
            assert isinstance(number, float) and math.isfinite(number)
            assert isinstance(objective.attrs(value), dict)
            if not type(objective).relative:
                assert 0.0 <= number <= 1.0

    def test_a_structural_objective_sees_compression(self, objective):
        """Size, latency, MACs: a model with half its channels and 4-bit weights is better on it."""
        if not type(objective).structural:
            pytest.skip("depends on the weights, not only on the structure")
        values = []
        for outcome in (toy_outcome(64), toy_outcome(64, compressed=True)):
            value = objective(outcome)
            values.append(value.value_ms if isinstance(value, Measurement) else value)
        better = values[1] < values[0] if type(objective).direction == "minimize" else values[1] > values[0]
        assert better, values

    def test_the_front_and_the_plots_read_it_by_name(self, objective):
        import pandas as pd

        from search.results.front import hypervolume, objective_names, reference, signs
        from search.report.plots import pareto_figure

        names = ["accuracy", self.name] if self.name != "accuracy" else ["accuracy", "size_bytes"]
        rng = np.random.default_rng(0)
        df = pd.DataFrame({"number": range(6), "state": "COMPLETE", names[0]: rng.uniform(0.5, 0.9, 6),
                           names[1]: rng.uniform(1.0, 100.0, 6), "baseline": [""] * 5 + ["uncompressed"],
                           "feasible": True, "on_front": True})
        assert objective_names(df) == names and len(signs(names)) == 2
        assert 0.0 <= hypervolume(df, reference(df)) <= 1.0
        pareto_figure(df, title="contract")
