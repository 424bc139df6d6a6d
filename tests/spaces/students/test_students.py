"""Students: families build the same untrained student every time; StudentSpace samples ``arch``, the family's
``student.*`` parameters and the knobs on the student's own layers, and replays a trial from its params alone."""
from __future__ import annotations

import functools

import optuna
import pytest
import torch
from torch import nn

from search.models import ResNet, SmallCNN, torchvision_model
from spaces import (
    FIXED_ARCH, ChannelKnob, JointSpace, BitsKnob, ActivationBitsKnob, RankKnob, SparsityKnob, StudentFamily, StudentSpace,
)
from spaces._compressed import _Compressed

optuna.logging.set_verbosity(optuna.logging.WARNING)

INPUT_SHAPE = (1, 1, 28, 28)
CHOICES = {"width_mult": [0.25, 0.5], "depth": [1, 2], "kernel_size": [3, 5], "separable": [False, True]}


def family(**kw) -> StudentFamily:
    return StudentFamily(net=functools.partial(SmallCNN, widths=(8, 16, 32), hidden=32), choices=kw or CHOICES)


def knobs_for(model: nn.Module) -> JointSpace:
    return JointSpace([RankKnob(model=model), SparsityKnob(model=model), BitsKnob(model=model), ActivationBitsKnob(model=model)])


@pytest.fixture
def space(small_cnn) -> StudentSpace:
    teacher = JointSpace([ChannelKnob(model=small_cnn, input_shape=INPUT_SHAPE), RankKnob(model=small_cnn),
                          SparsityKnob(model=small_cnn), BitsKnob(model=small_cnn), ActivationBitsKnob(model=small_cnn)])
    return StudentSpace(teacher=teacher, family=family(), knobs=knobs_for, searched={"temperature": [2.0, 4.0]})


def student_params(space: StudentSpace, **arch) -> dict:
    params = {"arch": "student", "student.width_mult": 0.25, "student.depth": 2, "student.kernel_size": 5,
              "student.separable": True, "distill.temperature": 4.0, **{f"student.{k}": v for k, v in arch.items()}}
    return {**params, **space.student_knobs(params).identity()}


def test_family_builds_the_same_untrained_student_every_time():
    f = family()
    params = {"student.width_mult": 0.5, "student.depth": 2, "student.kernel_size": 5, "student.separable": True}
    a, b = f.build(params), f.build(dict(params))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a(torch.zeros(2, *INPUT_SHAPE[1:])).shape == (2, 10)
    assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in a.modules())  # depthwise-separable
    assert sum(p.numel() for p in a.parameters()) < sum(p.numel() for p in SmallCNN(widths=(8, 16, 32)).parameters())
    assert f.names() == [f"student.{k}" for k in CHOICES]


@pytest.mark.parametrize(("bad", "words"), [
    ({"student.width_mult": 0.3}, ["student.width_mult", "0.3", "[0.25, 0.5]"]),
    ({"student.separable": 1}, ["student.separable", "1"]),
    ({"student.depth": None}, ["student.depth"]),
])
def test_family_rejects_values_off_its_choices(bad, words):
    params = {"student.width_mult": 0.5, "student.depth": 1, "student.kernel_size": 3, "student.separable": False}
    with pytest.raises(ValueError) as err:
        family().build({**params, **bad})
    assert all(w in str(err.value) for w in words), str(err.value)
    with pytest.raises(ValueError, match="params has no 'student.depth'"):
        family().build({k: v for k, v in params.items() if k != "student.depth"})


def test_family_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"space.student.family.choices.width_mult must be a non-empty list"):
        family(width_mult=[])
    with pytest.raises(ValueError, match=r"space.student.family: cannot build a student with .*kernel_size"):
        family(kernel_size=[3, 4])  # the family builds its corner students at once
    with pytest.raises(ValueError, match="net must be a callable"):
        StudentFamily(net="SmallCNN", choices=CHOICES)


@pytest.mark.parametrize("net", [
    functools.partial(ResNet, depth=8), functools.partial(torchvision_model, name="mobilenet_v2"),
])
def test_zoo_and_torchvision_families_build_students(net):
    choices = {"width_mult": [0.25, 0.5]}
    if getattr(net, "func", None) is ResNet:
        choices.update(kernel_size=[3, 5], separable=[False, True])
    f = StudentFamily(net=net, choices=choices)
    small, large = (f.build({f"student.{k}": v[i] for k, v in choices.items()}) for i in (0, -1))
    assert small(torch.zeros(2, *INPUT_SHAPE[1:])).shape == (2, 10)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in large.parameters())


def test_sample_with_a_real_study_covers_teacher_and_student_trials(space, small_cnn):
    """Conditional parameters: a student's knob names coincide with the teacher's where its layers share fqns,
    with the same distributions, so one study holds both; every trial replays from its params alone."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    kinds = set()
    for _ in range(12):
        trial = study.ask()
        params = space.sample(trial)
        assert params == trial.params
        kinds.add(params["arch"])
        model = space.apply(small_cnn, trial.params)
        assert model(torch.zeros(2, *INPUT_SHAPE[1:])).shape == (2, 10)
        if params["arch"] == "student":
            assert {"student.width_mult", "distill.temperature"} <= set(params)
            assert not any(k.startswith("channels.") for k in params)  # not among the students' knobs here
            fqns = {k.split(".", 1)[1] for k in params if k.startswith("bits.")}
            assert fqns == {n for n, m in space.family.build(params).named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        else:
            assert not any(k.startswith(("student.", "distill.")) for k in params)
        study.tell(trial, 0.0)
    assert kinds == {"teacher", "student"}


def test_a_student_trial_replays_to_the_untrained_student_with_its_knobs(space, small_cnn, batch):
    before = {k: v.clone() for k, v in small_cnn.state_dict().items()}
    params = student_params(space)
    knobs = space.student_knobs(params)
    params.update({**knobs["bits"].uniform(4), **knobs["abits"].uniform(8)})
    params.update(knobs["sparsity"].uniform(0.5))
    a, b = space.apply(small_cnn, params), space.apply(small_cnn, dict(params))
    assert all(torch.equal(v, small_cnn.state_dict()[k]) for k, v in before.items())  # teacher untouched
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    layers = [m for m in a.modules() if isinstance(m, _Compressed)]
    assert layers and all(m.wbits == 4 for m in layers)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in a.modules())  # finish folded BN
    structured = space.apply_structure(small_cnn, params)
    assert any(isinstance(m, nn.BatchNorm2d) for m in structured.modules())  # trained before folding
    assert any(getattr(m, "weight_mask", None) is not None for m in structured.modules())
    assert space.changes_structure(params) and space.quantizes(params)
    assert space.changes_structure(student_params(space)) and not space.quantizes(student_params(space))


def test_a_teacher_trial_is_exactly_the_joint_space(space, small_cnn, batch):
    params = space.with_values(bits=space["bits"].uniform(8))
    assert params["arch"] == "teacher" and space.identity()["arch"] == "teacher"
    rest = {k: v for k, v in params.items() if k != "arch"}
    ours, joint = space.apply(small_cnn, params).eval(), space.teacher.apply(small_cnn, rest).eval()
    with torch.no_grad():
        assert torch.equal(ours(batch), joint(batch))
    assert "bits" in space and space["bits"] is space.teacher["bits"]


def test_bad_student_params_name_the_key(space, small_cnn):
    params = student_params(space)
    for key, bad in (("arch", "pupil"), ("distill.temperature", 3.0), ("student.kernel_size", 7)):
        with pytest.raises(ValueError) as err:
            space.apply(small_cnn, {**params, key: bad})
        assert key in str(err.value) and repr(bad) in str(err.value), str(err.value)
    with pytest.raises(ValueError, match="params has no 'distill.temperature'"):
        space.apply(small_cnn, {k: v for k, v in params.items() if k != "distill.temperature"})
    with pytest.raises(ValueError, match="channels.features.0"):
        space.apply(small_cnn, {**params, "channels.features.0": 0.5})  # channels are not a student knob here
    with pytest.raises(ValueError, match="space.arch"):
        StudentSpace(teacher=space.teacher, family=family(), knobs=knobs_for, arch=["teacher", "pupil"])


def test_a_space_of_students_only_and_without_knobs(space, small_cnn):
    """Searched trials are students and record no ``arch``; an enqueued trial fixed to the teacher (the
    baselines) records it, under the one distribution ``arch`` has in every study."""
    only = StudentSpace(teacher=space.teacher, family=family(width_mult=[0.25]), knobs=lambda m: None, arch=["student"])
    study = optuna.create_study()
    study.enqueue_trial(only.identity(), user_attrs={FIXED_ARCH: "teacher"})
    baseline = only.sample(study.ask())
    assert baseline == only.identity() and not only.is_student(baseline)
    params = only.sample(study.ask())
    assert params == {"student.width_mult": 0.25} and only.is_student(params)
    model = only.apply(small_cnn, params)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert only.changes_structure(params) and not only.quantizes(params)


def test_a_search_starts_from_students_spread_from_the_largest_smaller_than_the_teacher_at_int8(space, small_cnn):
    """``starts``: one architecture per parameter count below the teacher's, the largest first and one towards the
    middle, each at the student's own ``uniform_int8`` and the searched temperature's middle choice; each replays."""
    teacher_params = sum(p.numel() for p in small_cnn.parameters())
    sizes = sorted({sum(p.numel() for p in space.family.build(g).parameters()) for g in space.family.grid()},
                   reverse=True)
    starts = space.starts(2, small_cnn)
    assert len(starts) == 2 and all(t["arch"] == "student" and t["distill.temperature"] == 4.0 for t in starts)
    built = [space.apply_structure(small_cnn, t) for t in starts]
    counts = [sum(p.numel() for p in m.parameters()) for m in built]
    assert counts[0] == max(n for n in sizes if n < teacher_params) and counts[1] == sizes[round((len(sizes) - 1) / 2)]
    for t in starts:
        bits = {k: v for k, v in t.items() if k.startswith(("bits.", "abits."))}
        assert bits and set(bits.values()) == {8}, t
        assert space.changes_structure(t) and space.quantizes(t)
    assert space.starts(0, small_cnn) == [] and space.starts(50, small_cnn)[0] == starts[0]
    only_teacher = StudentSpace(teacher=space.teacher, family=space.family, knobs=knobs_for, arch=["teacher"])
    assert only_teacher.starts(2, small_cnn) == []
