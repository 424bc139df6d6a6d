"""The start-up probe: on a model of grouped convolutions, a concatenation, a channel shuffle and a shared module,
every knob keeps only the layers it can change, says which it left out and why, and then every configuration
the search can sample builds, runs and exports."""
from __future__ import annotations

import optuna
import pytest
import torch

from spaces import JointSpace, calibrate, materialize
from spaces.probe import extremes, probe, said, without

INPUT = (1, 1, 28, 28)


@pytest.fixture(scope="module")
def odd_space(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from search.app import build_space
    from search._checks import CONF
    from tests.spaces.odd_net import OddNet

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["space=full"])
    torch.manual_seed(0)
    net = OddNet()
    return net, build_space(cfg, net, INPUT)


def test_the_probe_leaves_out_what_breaks_and_says_why(odd_space):
    net, space = odd_space
    lines = said(space)
    left = {k.knob: k.left_out for k in space.knobs}
    assert any(left.values())  # this model defeats some knob somewhere (the output layer for channels at least)
    for knob in space.knobs:
        assert not set(knob.layers) & set(knob.left_out)
        for line in lines:
            if line.startswith(f"space.knobs.{knob.knob}:"):
                assert all(f in line for f in list(knob.left_out)[:3])
    assert probe(space, net, INPUT) == {}  # probed again, what is left breaks nothing


def test_a_probe_kept_in_a_folder_is_read_back_by_a_later_process(odd_space, tmp_path, monkeypatch):
    import importlib
    import json

    probe_module = importlib.import_module("spaces.probe")

    net, space = odd_space
    broken = {"channels": {"fc": "RuntimeError: a reason"}}
    monkeypatch.setattr(probe_module, "_SEEN", {})
    assert probe(space, net, INPUT, cache=tmp_path) == {}  # what is left of the space breaks nothing
    assert not list(tmp_path.iterdir())  # read only: written by keep, once a run's config is checked
    probe_module.keep(tmp_path)
    (stored,) = tmp_path.glob("*.json")
    assert json.loads(stored.read_text()) == {}
    stored.write_text(json.dumps(broken))  # what a process found earlier, read back rather than probed again
    monkeypatch.setattr(probe_module, "_SEEN", {})
    assert probe(space, net, INPUT, cache=tmp_path) == broken
    # once the engine's code changes (a layer an older engine could not export), probed again
    monkeypatch.setattr(probe_module, "_engine", lambda: "another engine")
    monkeypatch.setattr(probe_module, "_SEEN", {})
    assert probe(space, net, INPUT, cache=tmp_path) == {}


def test_every_sampled_configuration_builds_runs_and_exports(odd_space):
    """What a trial does to its model, on 12 random configurations of every knob together."""
    net, space = odd_space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    x = torch.randn(*INPUT)
    for _ in range(12):
        trial = study.ask()
        params = space.sample(trial)
        model = space.apply(net, params).eval()
        calibrate(model, [torch.randn(8, *INPUT[1:])])
        with torch.no_grad():
            assert model(x).shape == (1, 10), params
        artifact = materialize(model, input_shape=INPUT, calibration=torch.randn(8, *INPUT[1:]).numpy())
        assert artifact.onnx and artifact.packed
        study.tell(trial, 0.0)


def test_extremes_are_the_hardest_and_mildest_non_identity_choices():
    from spaces.knobs.channels import ChannelKnob

    from tests.spaces.odd_net import OddNet

    knob = ChannelKnob(model=OddNet(), input_shape=INPUT, high=0.75, step=0.25)
    fqn = knob.layers[0]
    assert extremes(knob, fqn) == [0.75, 0.25]


def test_a_knob_that_breaks_a_layer_is_left_out_of_it():
    """A knob whose every choice raises on one layer: the probe finds it, ``without`` drops it, ``said`` names it."""
    from spaces.knobs.sparsity import SparsityKnob

    from tests.spaces.odd_net import OddNet

    net = OddNet()
    knob = SparsityKnob(model=net)
    plain = knob.apply_

    def fragile(model, values):  # as Torch-Pruning failed on a grouped convolution fed by a concatenation
        if values.get("mix.0", 0.0) > 0:
            raise RuntimeError("INDICES element is out of DATA bounds")
        plain(model, values)

    knob.apply_ = fragile
    space = JointSpace([knob])
    broken = probe(space, net, INPUT)
    assert list(broken) == ["sparsity"] and list(broken["sparsity"]) == ["mix.0"]
    assert "RuntimeError: INDICES element is out of DATA bounds" in broken["sparsity"]["mix.0"]
    space = without(space, broken)
    assert "mix.0" not in space["sparsity"].layers and "mix.0" in space["sparsity"].left_out
    assert "mix.0 (it breaks the model: sparsity.mix.0=" in said(space)[0]


def test_a_failure_of_the_probe_itself_is_one_line_naming_the_knob_and_the_layer():
    """What breaks a layer leaves it out; a knob whose choices on a layer cannot be listed is no layer's failure but
    the probe's: one line naming the step, the knob and the layer (a ValueError: ``search.cli`` prints it, exit 2)."""
    from spaces.knobs.sparsity import SparsityKnob

    from tests.spaces.odd_net import OddNet

    net = OddNet()
    knob = SparsityKnob(model=net)
    plain = knob.choices

    def choices(fqn):
        return plain(fqn) if fqn != "mix.0" else 1 // 0

    knob.choices = choices
    with pytest.raises(ValueError) as exc:
        probe(JointSpace([knob]), net, INPUT)
    assert str(exc.value) == ("probe: space.knobs.sparsity: layer 'mix.0': its choices: ZeroDivisionError: integer "
                              "division or modulo by zero")


def test_a_knob_that_cannot_take_a_factorized_layer_is_left_out_of_it_at_start_up(small_cnn):
    """A knob that reads ``model.get_submodule(fqn).weight`` works on the teacher's layers alone but not on one the
    rank knob factorized: the probe tries it after rank, and only the layers rank can factorize are left out."""
    from spaces import BaseKnob
    from spaces.knobs.rank import RankKnob

    from tests.spaces.plugin_knob import RowSparsityKnob, row_mask

    class LayerByLayer(RowSparsityKnob):
        knob = "layer_by_layer_for_tests"

        def apply_(self, model, values):
            for fqn, fraction in values.items():
                if fraction > 0:
                    layer = model.get_submodule(fqn)
                    layer.weight.data *= row_mask(layer.weight, fraction)

    try:
        space = JointSpace([RankKnob(model=small_cnn, exclude=["fc2"]), LayerByLayer(model=small_cnn)])
        broken = probe(space, small_cnn, INPUT)
        factorized = space["rank"].layers
        assert list(broken) == ["layer_by_layer_for_tests"] and list(broken[LayerByLayer.knob]) == factorized
        why = broken[LayerByLayer.knob][factorized[0]]
        assert why == (f"{LayerByLayer.knob}.{factorized[0]}=0.75 after rank at their hardest: "
                       "AttributeError: 'Sequential' object has no attribute 'weight'")
        space = without(space, broken)
        assert space[LayerByLayer.knob].layers == ["fc2"]
        assert f"{factorized[0]} (it breaks the model: {why})" in said(space)[0]
        assert probe(space, small_cnn, INPUT) == {}
    finally:  # the suite checks that every registered knob is one of the project's
        BaseKnob.registry.pop(LayerByLayer.knob, None)
        BaseKnob.registry.pop(RowSparsityKnob.knob, None)


class _AuxNet(torch.nn.Module):
    """GoogLeNet in small: an auxiliary head, run in training mode only, reads ``a``'s channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(8, 8, 3)
        self.aux, self.fc = torch.nn.Linear(8, 10), torch.nn.Linear(8, 10)  # fc last: the output layer

    def forward(self, x):
        a = torch.relu(self.a(x))
        out = self.fc(torch.relu(self.b(a)).mean((2, 3)))
        return (out, self.aux(a.mean((2, 3)))) if self.training else out


def test_a_layer_whose_pruning_breaks_the_model_in_training_mode_is_left_out():
    """The auxiliary head is not in the eval-mode graph Torch-Pruning traces: pruning ``a`` leaves it reading 8
    channels of 4, which only a training-mode pass (the recovery's) finds."""
    from spaces import ChannelKnob

    net = _AuxNet().eval()
    space = JointSpace([ChannelKnob(model=net, input_shape=(1, 1, 12, 12))])
    broken = probe(space, net, (1, 1, 12, 12))
    assert set(broken["channels"]) == {"a"} and "in training mode" in broken["channels"]["a"]
    assert "b" in space.knobs[0].layers


def test_layers_that_break_the_model_only_together_are_left_out_one_by_one(monkeypatch):
    """torchvision RegNet's channel groups pruned together failed in Torch-Pruning, each alone did not: with every
    layer at its hardest failing, the layers are added one by one and the one that breaks the model with those
    before it is left out, with the reason."""
    import importlib

    probe_module = importlib.import_module("spaces.probe")
    from spaces import ChannelKnob

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(8, 8, 3), torch.nn.Conv2d(8, 8, 3),
                              torch.nn.Flatten(), torch.nn.LazyLinear(10)).eval()
    net(torch.randn(1, 1, 12, 12))
    space = JointSpace([ChannelKnob(model=net, input_shape=(1, 1, 12, 12))])
    real = probe_module._runs

    def clash(space, model, input_shape, x, calibration, expected, params):  # layers 0 and 2 cannot go together
        if {"channels.0", "channels.2"} <= {k for k, v in params.items() if v}:
            raise RuntimeError("INDICES element is out of DATA bounds")
        real(space, model, input_shape, x, calibration, expected, params)

    monkeypatch.setattr(probe_module, "_runs", clash)
    broken = probe(space, net, (1, 1, 12, 12))
    assert set(broken["channels"]) == {"2"}
    assert "with the 2 layer(s) before it kept at their hardest: RuntimeError: INDICES" in broken["channels"]["2"]
