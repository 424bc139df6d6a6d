"""The joint space: knobs phase by phase, one parameter dict, exclusive knobs per layer, policies from the knobs."""
from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

import spaces
from spaces import BaseKnob, JointSpace, Phase
from tests.spaces.knob_contract import build_knob

optuna.logging.set_verbosity(optuna.logging.WARNING)

DEFAULT = ("channels", "rank", "sparsity", "bits", "abits")
ACTIVE = {"channels": 0.5, "rank": 0.25, "sparsity": 0.5, "bits": 4, "abits": 8}


def _joint(model: nn.Module, names=DEFAULT) -> JointSpace:
    return JointSpace([build_knob(n, model) for n in names])


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    spaces.calibrate(model, [x])
    with torch.no_grad():
        return model(x)


def test_knobs_are_ordered_by_phase_and_each_appears_once(small_cnn):
    space = JointSpace([build_knob(n, small_cnn) for n in reversed(DEFAULT)])
    assert [k.knob for k in space.knobs] == list(DEFAULT)
    assert [k.phase for k in space.knobs] == sorted(k.phase for k in space.knobs)
    with pytest.raises(ValueError, match="once"):
        JointSpace([build_knob("sparsity", small_cnn), build_knob("sparsity", small_cnn)])


def test_unknown_parameters_are_rejected_by_name(small_cnn):
    space = _joint(small_cnn)
    with pytest.raises(ValueError, match="rank.no_such_layer"):
        space.apply(small_cnn, {**space.identity(), "rank.no_such_layer": 0.5})


def test_apply_is_structure_then_fold_then_quantize(small_cnn, batch):
    space = _joint(small_cnn)
    params = space.with_values(**{n: space[n].uniform(v) for n, v in ACTIVE.items()})
    structured = space.apply_structure(small_cnn, params)
    # channels, rank and sparsity are applied with BatchNorm still in place, nothing quantized yet
    assert any(isinstance(m, nn.BatchNorm2d) for m in structured.modules())
    assert not any(getattr(m, "wbits", 32) < 32 for m in structured.modules())
    assert any(getattr(m, "weight_mask", None) is not None for m in structured.modules())
    finished = space.finish(structured, params)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in finished.modules())
    assert any(getattr(m, "wbits", 32) == ACTIVE["bits"] for m in finished.modules())
    assert torch.equal(_forward(finished, batch), _forward(space.apply(small_cnn, params), batch))
    assert space.changes_structure(params) and space.quantizes(params)
    identity = space.identity()
    assert not space.changes_structure(identity) and not space.quantizes(identity)
    only_bits = space.with_values(bits=space["bits"].uniform(8))
    assert space.quantizes(only_bits) and not space.changes_structure(only_bits)


def test_identity_folds_batchnorm_and_keeps_outputs(resnet8, batch):
    space = _joint(resnet8)
    out = space.apply(resnet8, space.identity())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in out.modules())
    torch.testing.assert_close(_forward(out, batch), _forward(resnet8, batch), atol=1e-5, rtol=0)


def test_sample_covers_every_knob_and_replays(small_cnn):
    space = _joint(small_cnn)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        params = space.sample(trial)
        assert params == trial.params and set(params) == set(space.identity())
        space.apply(small_cnn, trial.params)
        study.tell(trial, 0.0)


def test_policies_come_from_the_knobs_declarations(small_cnn):
    space = _joint(small_cnn)
    policies = space.policies(small_cnn)
    assert list(policies)[0] == "uncompressed" and policies["uncompressed"] == space.identity()
    assert {"channels_50", "channels_50_int8", "rank_50", "global_magnitude_50", "uniform_int8",
            "uniform_w4a8"} <= set(policies)
    assert all(v == 8 for k, v in policies["channels_50_int8"].items() if k.startswith(("bits.", "abits.")))
    without_abits = _joint(small_cnn, ("channels", "bits")).policies(small_cnn)
    assert "uniform_int8" not in without_abits and "channels_50" in without_abits  # a knob it needs is absent


def _second_knob() -> type[BaseKnob]:
    """A second knob of the factorize phase, to see exclusivity at work; registered only while a test uses it."""

    class _Second(BaseKnob):

        knob = "second_factorization_for_tests"
        phase = Phase.FACTORIZE
        label, short, harder, technique = "second", "second", "low", "changed by a test knob"

        def choices(self, fqn):
            return (0.5, 1.0)

        def check(self, value, key):
            if value not in (0.5, 1.0):
                raise ValueError(f"{key}: {value!r} is not among the choices [0.5, 1.0]")

        @property
        def identity_value(self):
            return 1.0

        def apply_(self, model, values):
            for fqn, v in values.items():
                if v != 1.0:
                    with torch.no_grad():
                        model.get_submodule(fqn).weight.mul_(v)

    return _Second


def test_knobs_of_one_phase_are_exclusive_per_layer(small_cnn):
    _Second = _second_knob()
    try:
        space = JointSpace([build_knob("rank", small_cnn), _Second(model=small_cnn)])
        shared = [f for f in space["rank"].layers if f in space["second_factorization_for_tests"].layers]
        assert shared and set(space.selectors()) == {f"factorize.{f}" for f in shared}
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(6):
            trial = study.ask()
            params = space.sample(trial)
            for f in shared:
                chosen = params[f"factorize.{f}"]
                other = "second_factorization_for_tests" if chosen == "rank" else "rank"
                assert f"{chosen}.{f}" in params and f"{other}.{f}" not in params  # only the chosen one sampled
            space.apply(small_cnn, params)
            study.tell(trial, 0.0)
        # a value for a layer of a shared phase selects its knob
        params = space.with_values(second_factorization_for_tests={f"second_factorization_for_tests.{shared[0]}": 0.5})
        assert params[f"factorize.{shared[0]}"] == "second_factorization_for_tests"
        assert f"rank.{shared[0]}" not in params
        with pytest.raises(ValueError, match=f"factorize.{shared[0]}"):
            space.apply(small_cnn, {k: v for k, v in params.items() if k != f"factorize.{shared[0]}"})
    finally:
        BaseKnob.registry.pop("second_factorization_for_tests", None)


def test_every_registered_knob_has_its_config_and_a_contract_test():
    """A knob is one module, one config and one test module whose class subclasses ``KnobContract``."""
    import re
    from pathlib import Path

    here = Path(__file__).resolve().parent
    tested = set()
    for path in (here / "knobs").glob("test_*.py"):
        text = path.read_text()
        if "(KnobContract)" in text:
            tested |= set(re.findall(r'^    knob = "(\w+)"', text, flags=re.M))
    registered = {k for k in BaseKnob.registry if k != "second_factorization_for_tests"}
    assert registered <= tested, f"knobs without a contract test: {sorted(registered - tested)}"
    configs = {p.stem for p in (here.parents[1] / "conf" / "space" / "knob").glob("*.yaml")}
    assert registered <= configs, f"knobs without conf/space/knob/<name>.yaml: {sorted(registered - configs)}"
