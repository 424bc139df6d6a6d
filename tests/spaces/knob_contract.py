"""The contract every knob honours. Each knob's test module (``tests/spaces/knobs/test_<knob>.py``) subclasses
``KnobContract`` and sets ``knob``, ``active`` and ``bad``; the knob is built from its own config
(``conf/space/knob/<knob>.yaml``), on a SmallCNN and on a ResNet-8 (random weights, non-trivial BN).

What a knob must do: declare what the rest of the engine reads (phase, label, harder direction, scale,
technique); sample only ``<knob>.<fqn>`` of layers it covers, with ``trial.suggest_*`` alone; replay any stored
params; leave the model it was given untouched; change the model with an active value and not with the identity;
reject bad values with an error naming the key and the value; pack into a file that decodes to exactly the
weights the model runs; export to ONNX that computes what PyTorch computes; and be drawable by the report.
"""
from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import spaces
from spaces import BaseKnob, JointSpace, Phase

CONF = Path(__file__).resolve().parents[2] / "conf" / "space" / "knob"
INPUT_SHAPE = (1, 1, 28, 28)
ACTIVE_CONTEXT_VALUES = {"bits": 8, "abits": 8}  # what an active value of another knob is, for ``context``


def build_knob(name: str, model: nn.Module, **override: Any) -> BaseKnob:
    """The knob ``name`` built from its config file, as the search builds it."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cls = BaseKnob.registry[name]
    extra = {"input_shape": INPUT_SHAPE} if "input_shape" in inspect.signature(cls).parameters else {}
    return instantiate(cfg, model=model, **extra, **override, _convert_="all")


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    spaces.calibrate(model, [x])  # no-op without activation quantizers
    with torch.no_grad():
        return model(x)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"apply changed the input model's {changed}"


class KnobContract:
    """Subclass as ``class TestMyKnob(KnobContract)`` and set the class attributes below."""

    knob: ClassVar[str]  # the knob's name (its parameter prefix and config file)
    active: ClassVar[Any]  # a value that really changes a layer
    bad: ClassVar[list[Any]]  # values ``check`` must refuse
    context: ClassVar[tuple[str, ...]] = ()  # other knobs an active value needs to have an effect (abits: bits)
    min_change: ClassVar[float] = 1e-3  # how far an active value at least moves the outputs (float16: rounding only)
    settings: ClassVar[dict[str, Any]] = {}  # over the knob's config file, as a user's overrides (bits: 16 in choices)

    @pytest.fixture(params=["small_cnn", "resnet8"])
    def model(self, request) -> nn.Module:
        return request.getfixturevalue(request.param)

    @pytest.fixture
    def space(self, model) -> BaseKnob:
        return build_knob(self.knob, model, **self.settings)

    def joint(self, model: nn.Module) -> JointSpace:
        """The knob with the knobs its active value needs."""
        return JointSpace([build_knob(n, model, **(self.settings if n == self.knob else {}))
                           for n in (*self.context, self.knob)])

    def active_params(self, joint: JointSpace) -> dict[str, Any]:
        overrides = {n: joint[n].uniform(ACTIVE_CONTEXT_VALUES[n]) for n in self.context}
        return joint.with_values(**overrides, **{self.knob: joint[self.knob].uniform(self.active)})

    # ------------------------------------------------------------------ declaration
    def test_declares_what_the_engine_reads(self, space):
        cls = type(space)
        assert BaseKnob.registry[self.knob] is cls and cls.knob == self.knob
        assert isinstance(cls.phase, Phase) and cls.harder in ("low", "high") and cls.scale in ("fraction", "log2")
        assert cls.label and cls.short and cls.technique
        assert space.layers, "the knob covers no layer of the model"
        for fqn in space.layers:
            choices = space.choices(fqn)
            assert space.identity_value in choices
            for value in choices:
                space.check(value, space.name(fqn))
        assert self.active in space.choices(space.layers[0]) or cls.scale == "fraction"

    def test_config_file_names_this_knob(self):
        cfg = OmegaConf.load(CONF / f"{self.knob}.yaml")
        target = cfg["_target_"]
        module, _, name = target.rpartition(".")
        assert getattr(__import__(module, fromlist=[name]), name) is BaseKnob.registry[self.knob]

    def test_building_leaves_the_model_untouched(self, small_cnn):
        small_cnn.train()
        before = _snapshot(small_cnn)
        build_knob(self.knob, small_cnn)
        _assert_same_state(before, small_cnn)
        assert small_cnn.training, "building the knob switched the model to eval mode"

    # ------------------------------------------------------------------ sampling and replay
    def test_sample_with_a_real_study_names_only_knob_dot_fqn(self, space, model):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(3):
            trial = study.ask()
            params = space.sample(trial)
            assert params == trial.params  # only trial.suggest_* calls
            assert set(params) == {space.name(f) for f in space.layers}
            for key in params:
                prefix, _, fqn = key.partition(".")
                assert prefix == self.knob and fqn in space.layers, key
                assert isinstance(model.get_submodule(fqn), (nn.Conv2d, nn.Linear))
            assert isinstance(space.apply(model, trial.params), nn.Module)  # a stored trial replays
            study.tell(trial, 0.0)

    def test_sample_with_a_fixed_trial_returns_the_fixed_values(self, space):
        for params in (space.uniform(self.active), space.identity()):
            assert space.sample(optuna.trial.FixedTrial(params)) == params

    def test_apply_returns_a_new_module_and_leaves_the_input_untouched(self, space, model, batch):
        before, y_before = _snapshot(model), _forward(model, batch)
        types_before = {n: type(m) for n, m in model.named_modules()}
        out = space.apply(model, space.uniform(self.active))
        assert out is not model
        _assert_same_state(before, model)
        assert {n: type(m) for n, m in model.named_modules()} == types_before
        with torch.no_grad():  # the new module shares no tensor with the input
            for t in list(out.parameters()) + list(out.buffers()):
                if t.is_floating_point():
                    t.add_(1.0)
        _assert_same_state(before, model)
        assert torch.equal(_forward(model, batch), y_before)

    def test_active_value_really_changes_the_model(self, model, batch):
        joint = self.joint(model)
        base = joint.with_values(**{n: joint[n].uniform(ACTIVE_CONTEXT_VALUES[n]) for n in self.context})
        y_base = _forward(joint.apply(model, base), batch)
        y = _forward(joint.apply(model, self.active_params(joint)), batch)
        assert y.shape == y_base.shape and (y - y_base).abs().max() > self.min_change

    def test_identity_keeps_outputs(self, space, model, batch):
        expected = _forward(copy.deepcopy(model), batch)
        torch.testing.assert_close(_forward(space.apply(model, space.identity()), batch), expected, atol=1e-5, rtol=0)

    def test_apply_is_deterministic(self, space, model, batch):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        for params in [space.uniform(self.active), *(space.sample(study.ask()) for _ in range(2))]:
            a, b = space.apply(model, params), space.apply(model, dict(params))
            assert set(a.state_dict()) == set(b.state_dict())
            for key, value in a.state_dict().items():
                assert torch.equal(value, b.state_dict()[key]), key
            assert torch.equal(_forward(a, batch), _forward(b, batch))

    def test_missing_parameter_raises_value_error_naming_it(self, space, model):
        identity = space.identity()
        key = next(iter(identity))
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            space.apply(model, {k: v for k, v in identity.items() if k != key})

    def test_bad_value_raises_value_error_naming_key_and_value(self, space, model):
        key = next(iter(space.identity()))
        for bad in self.bad:
            with pytest.raises(ValueError) as err:
                space.apply(model, {**space.identity(), key: bad})
            msg = str(err.value)
            assert key in msg and (repr(bad) in msg or str(bad) in msg), msg

    # ------------------------------------------------------------------ the artifact
    def test_packed_file_decodes_to_the_weights_the_model_runs(self, model, batch):
        joint = self.joint(model)
        built = joint.apply(model, self.active_params(joint))
        spaces.calibrate(built, [batch])
        artifact = spaces.materialize(built, input_shape=INPUT_SHAPE, calibration=batch.numpy())
        decoded, plain = spaces.unpack(artifact.packed), spaces.to_plain(built).state_dict()
        for key, value in plain.items():
            if key.endswith("num_batches_tracked"):
                continue
            assert key in decoded, key
            assert torch.equal(decoded[key], value.float()), key

    def test_onnx_computes_what_pytorch_computes(self, model, batch):
        joint = self.joint(model)
        built = joint.apply(model, self.active_params(joint))
        y = _forward(built, batch).numpy()
        artifact = spaces.materialize(built, input_shape=INPUT_SHAPE, calibration=batch.numpy())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.log_severity_level = 1, 3
        session = ort.InferenceSession(artifact.onnx, opts, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
        tolerance = 0.1 * np.abs(y).max() if artifact.int8_layers else 1e-4 * max(1.0, np.abs(y).max())
        assert np.abs(got - y).max() <= tolerance

    # ------------------------------------------------------------------ what reads the declaration
    def test_baselines_are_valid_params_where_the_space_has_their_knobs(self, small_cnn):
        joint = JointSpace([build_knob(n, small_cnn) for n in BaseKnob.registry])
        declared = joint[self.knob].baselines(small_cnn)
        policies = joint.policies(small_cnn)
        for name in declared:
            assert name in policies, f"baseline {name} was left out of a space with every knob"
            joint.apply(small_cnn, policies[name])

    def test_the_report_draws_its_parameters(self, space):
        from search.report import analysis, figures

        names = list(space.uniform(self.active))
        assert analysis.knob_params(names, strict=True) == names
        assert self.knob in analysis.knobs_of(names)
        assert figures.knob_colour(self.knob) != "#7f7f7f"

    def test_describe_says_what_it_did(self, model):
        joint = self.joint(model)
        built = joint.apply(model, self.active_params(joint))
        knob = joint[self.knob]
        texts = [knob.describe(model.get_submodule(f), built.get_submodule(f)) for f in knob.layers]
        assert all(isinstance(t, str) for t in texts) and any(texts)
