"""One contract every space must honour: ChannelSpace, RankSpace, SparsitySpace, QuantSpace and
JointSpace of all four, each on a SmallCNN and on a ResNet-8 (random weights, non-trivial BN)."""
from __future__ import annotations

import copy
import re

import optuna
import pytest
import torch
from torch import nn

import spaces
from spaces import ChannelSpace, JointSpace, QuantSpace, RankSpace, SparsitySpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

INPUT_SHAPE = (1, 1, 28, 28)

# A value per knob that really changes a layer (used to build "active" parameter sets).
ACTIVE = {"channels": 0.5, "rank": 0.25, "sparsity": 0.5, "bits": 4, "abits": 8}
# Values each knob must reject (out of range, not a choice, wrong type).
BAD = {
    "channels": [1.0, -0.125, 1.5, float("nan"), "0.5"],
    "rank": [0.3, 0.0, 2.0, "0.25"],
    "sparsity": [1.0, -0.1, float("nan"), "0.5"],
    "bits": [1, 16, 64, "8"],
    "abits": [4, 16, "8"],
}


def _base_spaces(model: nn.Module) -> list[spaces.BaseSpace]:
    return [
        ChannelSpace(model=model, input_shape=INPUT_SHAPE),
        RankSpace(model=model),
        SparsitySpace(model=model),
        QuantSpace(model=model),
    ]


FACTORIES = {
    "channels": lambda m: ChannelSpace(model=m, input_shape=INPUT_SHAPE),
    "rank": lambda m: RankSpace(model=m),
    "sparsity": lambda m: SparsitySpace(model=m),
    "bits": lambda m: QuantSpace(model=m),
    "joint": lambda m: JointSpace(_base_spaces(m)),
}


@pytest.fixture(params=["small_cnn", "resnet8"])
def model(request) -> nn.Module:
    return request.getfixturevalue(request.param)


@pytest.fixture(params=list(FACTORIES))
def space(request, model):
    return FACTORIES[request.param](model)


def _layers_by_prefix(space) -> dict[str, list[str]]:
    """Which fqns each parameter prefix may name."""
    parts = space.spaces if isinstance(space, JointSpace) else [space]
    out = {}
    for s in parts:
        out[s.knob] = list(s.layers)
        if isinstance(s, QuantSpace):
            out["abits"] = list(s.layers)
    return out


def _active(space) -> dict:
    return {key: ACTIVE[key.split(".", 1)[0]] for key in space.identity()}


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


def test_every_space_has_layers_to_change(space):
    by_prefix = _layers_by_prefix(space)
    assert by_prefix and all(by_prefix.values()), by_prefix


def test_sample_with_a_real_study_names_only_knob_dot_fqn(space, model):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    by_prefix = _layers_by_prefix(space)
    for _ in range(3):
        trial = study.ask()
        params = space.sample(trial)
        # only trial.suggest_* calls: what it returns is exactly what the trial recorded
        assert params == trial.params
        assert set(params) == set(space.identity())
        for key in params:
            match = re.fullmatch(r"(channels|rank|sparsity|bits|abits)\.(.+)", key)
            assert match, key
            prefix, fqn = match.groups()
            assert prefix in by_prefix and fqn in by_prefix[prefix], key
            assert isinstance(model.get_submodule(fqn), (nn.Conv2d, nn.Linear))
        # a stored trial replays: its params are accepted by apply
        out = space.apply(model, trial.params)
        assert isinstance(out, nn.Module)
        study.tell(trial, 0.0)


def test_sample_with_fixed_trial_returns_the_fixed_values(space):
    active = _active(space)
    assert space.sample(optuna.trial.FixedTrial(active)) == active
    identity = space.identity()
    assert space.sample(optuna.trial.FixedTrial(identity)) == identity


def test_apply_returns_a_new_module_and_leaves_the_input_untouched(space, model, batch):
    before = _snapshot(model)
    types_before = {n: type(m) for n, m in model.named_modules()}
    y_before = _forward(model, batch)

    out = space.apply(model, _active(space))

    assert out is not model
    _assert_same_state(before, model)
    assert {n: type(m) for n, m in model.named_modules()} == types_before
    # the new module shares no tensor with the input: scribbling on it leaves the input alone
    with torch.no_grad():
        for t in list(out.parameters()) + list(out.buffers()):
            if t.is_floating_point():
                t.add_(1.0)
    _assert_same_state(before, model)
    assert torch.equal(_forward(model, batch), y_before)


def test_active_params_really_change_the_model(space, model, batch):
    y_teacher = _forward(model, batch)
    y = _forward(space.apply(model, _active(space)), batch)
    assert y.shape == y_teacher.shape
    assert (y - y_teacher).abs().max() > 1e-3


def test_apply_identity_keeps_outputs(space, model, batch):
    expected = _forward(copy.deepcopy(model), batch)
    out = space.apply(model, space.identity())
    assert out is not model
    got = _forward(out, batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    if isinstance(space, JointSpace):  # BN really got folded, yet the outputs are those of the teacher
        assert not any(isinstance(m, nn.BatchNorm2d) for m in out.modules())
        assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_apply_is_deterministic(space, model, batch):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    param_sets = [_active(space)] + [space.sample(study.ask()) for _ in range(2)]
    for params in param_sets:
        a = space.apply(model, params)
        b = space.apply(model, dict(params))
        assert set(a.state_dict()) == set(b.state_dict())
        for key, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[key]), key
        assert torch.equal(_forward(a, batch), _forward(b, batch))


def test_missing_parameter_raises_value_error_naming_it(space, model):
    identity = space.identity()
    for key in identity:
        params = {k: v for k, v in identity.items() if k != key}
        with pytest.raises(ValueError) as err:
            space.apply(model, params)
        assert key in str(err.value)


def test_out_of_range_value_raises_value_error_naming_key_and_value(space, model):
    identity = space.identity()
    first_per_prefix = {}
    for key in identity:
        first_per_prefix.setdefault(key.split(".", 1)[0], key)
    assert first_per_prefix
    for prefix, key in first_per_prefix.items():
        for bad in BAD[prefix]:
            params = {**identity, key: bad}
            with pytest.raises(ValueError) as err:
                space.apply(model, params)
            msg = str(err.value)
            assert key in msg, msg
            assert repr(bad) in msg or str(bad) in msg, msg


def test_joint_space_rejects_unknown_parameters(model):
    space = FACTORIES["joint"](model)
    params = {**space.identity(), "rank.no_such_layer": 0.5}
    with pytest.raises(ValueError, match="rank.no_such_layer"):
        space.apply(model, params)


def test_joint_space_orders_knobs_structure_first(model):
    space = JointSpace(list(reversed(_base_spaces(model))))
    assert [s.knob for s in space.spaces] == ["channels", "rank", "sparsity", "bits"]
    with pytest.raises(ValueError, match="once"):
        JointSpace([SparsitySpace(model=model), SparsitySpace(model=model)])


@pytest.mark.parametrize(
    "knob",
    list(FACTORIES),
)
def test_building_a_space_leaves_the_model_untouched(knob, small_cnn):
    small_cnn.train()
    before = _snapshot(small_cnn)
    FACTORIES[knob](small_cnn)
    _assert_same_state(before, small_cnn)
    assert small_cnn.training, "building the space switched the model to eval mode"


def test_joint_apply_is_structure_then_fold_then_quantize(model, batch):
    space = FACTORIES["joint"](model)
    params = _active(space)
    structured = space.apply_structure(model, params)
    # channels, rank and sparsity are applied with BatchNorm still in place, nothing quantized yet
    assert any(isinstance(m, nn.BatchNorm2d) for m in structured.modules())
    assert not any(getattr(m, "wbits", 32) < 32 for m in structured.modules())
    assert any(getattr(m, "weight_mask", None) is not None for m in structured.modules())
    finished = space.finish(structured, params)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in finished.modules())
    assert any(getattr(m, "wbits", 32) == ACTIVE["bits"] for m in finished.modules())
    assert torch.equal(_forward(finished, batch), _forward(space.apply(model, params), batch))
    assert space.changes_structure(params) and space.quantizes(params)
    identity = space.identity()
    assert not space.changes_structure(identity) and not space.quantizes(identity)
    only_bits = space.with_values(bits=space["bits"].uniform(8))
    assert space.quantizes(only_bits) and not space.changes_structure(only_bits)
