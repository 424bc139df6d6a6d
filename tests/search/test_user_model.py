"""User models of unusual structure on the user's own arrays through the whole engine at the smoke budget: a module
of its own (``tests/spaces/odd_net.py``: grouped convolutions, one fed by a concatenation, a channel shuffle, one
convolution used twice), where no trial fails, and a searched trial and the baseline that prunes and quantizes pick
into bundles that rebuild and hold what the search recorded; and torchvision's ShuffleNetV2, whose channel shuffle
Torch-Pruning cannot trace, searched on the channel groups it prunes correctly and picked."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from tests.search.studies import searched, write_arrays

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def odd_study(tmp_path_factory):
    from search import data as data_module
    from search.training.loops import train_teacher
    from tests.spaces.odd_net import OddNet

    folder = tmp_path_factory.mktemp("odd")
    torch.manual_seed(0)
    splits = data_module.load(val_size=1000, seed=0)
    net = train_teacher(OddNet(), splits.train_x[:6400], splits.train_y[:6400], epochs=1, lr=0.05, batch_size=128,
                        seed=0, log=lambda _: None)
    torch.save(net.state_dict(), folder / "odd.pt")
    # the user's data too (data=arrays), a part of Fashion-MNIST already normalised (mean 0, std 1: taken as it
    # is): the teacher's logits on 8,000 training images rather than 59,000 (25 s of this fixture's 66 s)
    write_arrays(folder / "data.npz", splits, train=8000, test=2000)
    overrides = ["experiment=smoke", f"results_dir={folder / 'results'}", "model=custom",
                 "model.net._target_=tests.spaces.odd_net.OddNet", f"model.checkpoint={folder / 'odd.pt'}",
                 "data=arrays", f"data.path={folder / 'data.npz'}", "data.mean=[0.0]", "data.std=[1.0]",
                 "study.name=odd", "study.n_trials=2", "hardware.warmup=2", "hardware.repeats=10"]
    return overrides, *searched(overrides)


def test_no_trial_fails_on_the_odd_model(odd_study):
    _, _, study = odd_study
    failed = {t.number: t.user_attrs.get("error") for t in study.get_trials() if t.state == TrialState.FAIL}
    assert failed == {}
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) >= 8  # the 7 baselines and the searched trials


# a searched trial (every knob, per layer) and the baseline that both prunes and quantizes (channels_50_int8); the
# other baselines each apply one knob the searched trials apply too (a pick costs 15-20 s on 2 cores; int4 weights
# in model.onnx are test_materialize.py's)
PICKED = {None, "channels_50_int8"}


def test_searched_trials_and_baselines_pick_into_bundles_that_hold_what_was_recorded(odd_study):
    from search.cli import compose_checked
    from search.pick.bundle import load_model
    from search.pick.picker import pick
    from spaces import to_plain

    overrides, _, study = odd_study
    x = torch.randn(4, 1, 28, 28)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    searched = [t for t in done if "baseline" not in t.user_attrs]
    trials = [t for t in done if t.user_attrs.get("baseline") in PICKED - {None}] + searched[-1:]
    assert {t.user_attrs.get("baseline") for t in trials} == PICKED
    for trial in trials:
        picked = pick(compose_checked([*overrides, f"pick.trial={trial.number}"]))
        # latency told apart from the machine's noise (test_pick.py); a default study's 15 front trials, picked
        # three times each, all verified (docs/results/robustness.md)
        assert picked.verified, (trial.number, picked.report["reasons"])
        with torch.no_grad():
            diff = (load_model(picked.path)(x) - to_plain(picked.model)(x)).abs().max().item()
        assert diff <= 1e-4, (trial.number, trial.params)


# --------------------------------------------------------------------------- ShuffleNetV2: a channel shuffle


@pytest.fixture(scope="module")
def shufflenet_study(tmp_path_factory):
    """``model=torchvision model.net.name=shufflenet_v2_x0_5 experiment=smoke`` on 2,560 training images (the
    search trains the teacher: 3 epochs of 20 batches, 0.72 validation accuracy), the channels knob on the stem,
    stage 2 and the last 1x1 convolution, one searched trial: every way a ShuffleNetV2 channel group is searched or left out, at a
    fortieth of the probe's cost on all 57 layers and five knobs (7-12 minutes on 2 busy cores); one thread, as
    the images come one batch at a time (40 s in all against 220 s at two threads, on 2 busy cores)."""
    from search import data as data_module

    folder = tmp_path_factory.mktemp("shufflenet")
    write_arrays(folder / "data.npz", data_module.load(val_size=1000, seed=0), train=2560, val=500, test=500)
    overrides = ["experiment=smoke", "model=torchvision", "model.net.name=shufflenet_v2_x0_5", "model.train.epochs=3",
                 f"results_dir={folder / 'results'}", "data=arrays", f"data.path={folder / 'data.npz'}",
                 "data.mean=[0.0]", "data.std=[1.0]", "space=channels",
                 "space.knobs.channels.include=[conv1.*,stage2.*,conv5.*]", "study.name=shufflenet",
                 "study.n_trials=1", "hardware.warmup=2", "hardware.repeats=10", "threads=1"]
    return overrides, searched(overrides)[1]


def test_shufflenet_searches_its_channel_groups_and_picks(shufflenet_study):
    from search.cli import compose_checked
    from search.pick.picker import pick

    overrides, study = shufflenet_study
    failed = {t.number: t.user_attrs.get("error") for t in study.get_trials() if t.state == TrialState.FAIL}
    assert failed == {}
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.user_attrs.get("baseline") for t in done] == ["uncompressed", "channels_50", None]
    # the channels inside each block of stage 2 and the last 1x1 convolution's; those the shuffle moves, left out
    assert set(done[-1].params) == {*(f"channels.stage2.{b}.branch2.3" for b in range(4)), "channels.conv5.0"}
    picked = pick(compose_checked(overrides))  # python -m search.pick with the same overrides: the knee of the front
    assert picked.verified, picked.report["reasons"]
