"""Students derived from the teacher (spaces/derive.py): blocks dropped by importance, channels removed, weights
inherited or drawn afresh; the same student every time, and exactly the stored cuts on a teacher that holds them."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from search.models import ResNet, SmallCNN, torchvision_model
from search.models.transformers import TextTransformer, ViT
from spaces import DROPPED, PRUNED, DerivedFamily
from spaces.derive import ActivationImportance
from spaces.knobs.channels import prune_channels_

INPUT_SHAPE = (1, 1, 28, 28)


def params(depth: float = 0.0, width: float = 0.0) -> dict:
    return {"student.depth": depth, "student.width": width}


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics, so that blocks differ in how much they matter (as trained ones do)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.25)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 2)
    return model.eval()


def resnet(depth: int = 20, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomized(ResNet(depth=depth, widths=(8, 16, 32)), seed)


def identities(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.Identity)}


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("make", [lambda: resnet(20), lambda: randomized(SmallCNN(widths=(8, 16, 32), hidden=32), 0)])
def test_an_inherited_student_with_nothing_removed_computes_what_the_teacher_computes(make):
    teacher = make()
    student = DerivedFamily(model=teacher, input_shape=INPUT_SHAPE).build(params())
    batch = torch.randn(8, *INPUT_SHAPE[1:])
    with torch.no_grad():
        assert torch.allclose(student(batch), teacher(batch), atol=1e-6)
    assert student is not teacher and getattr(student, DROPPED) == {}


def test_a_resnet18_teacher_yields_students_with_fewer_blocks_per_stage_its_least_important_dropped():
    torch.manual_seed(0)
    teacher = randomized(torchvision_model(name="resnet18", num_classes=10, in_channels=1), 0)
    batch = torch.randn(16, *INPUT_SHAPE[1:])
    family = DerivedFamily(model=teacher, input_shape=INPUT_SHAPE, calibration=batch)
    assert family.blocks == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]  # same shape in and out
    with torch.no_grad():  # each block's importance worked out here: the output's relative change without it
        reference = teacher(batch)
        change = {}
        for fqn in family.blocks:
            cut = copy.deepcopy(teacher)
            parent, _, i = fqn.rpartition(".")
            cut.get_submodule(parent)[int(i)] = nn.Identity()
            change[fqn] = float((cut(batch) - reference).norm() / reference.norm())
    lowest = sorted(change, key=change.get)
    student = family.build(params(depth=0.5))  # 2.5 of 5 blocks: 3, halves up
    dropped = identities(student) & set(family.blocks)
    assert dropped == set(lowest[:3])
    stages = {f"layer{i}": len(teacher.get_submodule(f"layer{i}")) for i in range(1, 5)}
    left = {s: sum(not isinstance(b, nn.Identity) for b in student.get_submodule(s)) for s in stages}
    assert sum(left.values()) == sum(stages.values()) - 3 and any(left[s] < stages[s] for s in stages)
    assert student(torch.randn(2, *INPUT_SHAPE[1:])).shape == (2, 10)
    assert not identities(family.build(params(depth=0.0))) & set(family.blocks)


@pytest.mark.parametrize(("model", "shape", "dtype", "blocks"), [
    (lambda: ViT(depth=3), INPUT_SHAPE, "float32", ["blocks.0", "blocks.1", "blocks.2"]),
    (lambda: TextTransformer(num_classes=4, max_length=16), (1, 16), "int64", ["layers.0", "layers.1"]),
    (lambda: ResNet(depth=8), INPUT_SHAPE, "float32", ["layers.0"]),  # the two stages' first blocks change shape
    (lambda: SmallCNN(), INPUT_SHAPE, "float32", []),  # every conv changes the width; BN and ReLU hold no layer
])
def test_droppable_blocks_keep_their_input_shape(model, shape, dtype, blocks):
    assert DerivedFamily(model=model(), input_shape=shape, input_dtype=dtype).blocks == blocks


def test_width_removes_channels_in_every_group_and_keeps_the_classes():
    teacher = resnet(20)
    student = DerivedFamily(model=teacher, input_shape=INPUT_SHAPE).build(params(width=0.5))
    assert student.fc.out_features == 10 and student.conv1.out_channels == 4
    assert sum(p.numel() for p in student.parameters()) < 0.3 * sum(p.numel() for p in teacher.parameters())
    assert getattr(student, PRUNED) and student(torch.randn(2, *INPUT_SHAPE[1:])).shape == (2, 10)


def test_width_removes_the_channels_the_calibration_inputs_excite_least_not_the_smallest_weights():
    """Two channels of features.4 with the largest weights but a BatchNorm that silences them (gamma = beta = 0):
    the L2 norm of the weights keeps them, the activations (Minitron's importance) remove them first."""
    teacher = randomized(SmallCNN(widths=(8, 16, 32), hidden=32), 0)
    with torch.no_grad():
        teacher.features[4].weight[[3, 11]] *= 100
        teacher.features[5].weight[[3, 11]] = 0.0
        teacher.features[5].bias[[3, 11]] = 0.0
    student = DerivedFamily(model=teacher, input_shape=INPUT_SHAPE).build(params(width=0.25))
    removed = getattr(student, PRUNED)["features.4"]
    assert len(removed) == 4 and {3, 11} <= set(removed), removed
    by_norm = copy.deepcopy(teacher)
    prune_channels_(by_norm, {"features.4": 0.25}, INPUT_SHAPE)
    assert not {3, 11} & set(getattr(by_norm, PRUNED)["features.4"])  # what the weights alone would keep
    scores = ActivationImportance(teacher, torch.randn(8, *INPUT_SHAPE[1:]))
    assert float(scores.rms[teacher.features[5]][3]) == 0.0 and float(scores.rms[teacher.features[4]][3]) > 0


def test_scratch_has_the_inherited_architecture_and_other_weights():
    teacher = resnet(20)
    inherit = DerivedFamily(model=teacher, input_shape=INPUT_SHAPE).build(params(0.5, 0.25))
    family = DerivedFamily(model=teacher, input_shape=INPUT_SHAPE, init="scratch", seed=3)
    scratch = family.build(params(0.5, 0.25))
    shapes = {k: v.shape for k, v in inherit.state_dict().items()}
    assert {k: v.shape for k, v in scratch.state_dict().items()} == shapes
    assert identities(scratch) == identities(inherit)
    layers = [n for n, m in scratch.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    assert layers and all(not torch.equal(scratch.get_submodule(n).weight, inherit.get_submodule(n).weight)
                          for n in layers)
    assert same_weights(scratch, family.build(params(0.5, 0.25)))  # drawn under the family's seed


def test_build_is_deterministic_and_leaves_the_teacher_alone():
    teacher = resnet(20)
    before = copy.deepcopy(teacher.state_dict())
    family = DerivedFamily(model=teacher, input_shape=INPUT_SHAPE)
    a, b = family.build(params(0.5, 0.25)), family.build(dict(params(0.5, 0.25)))
    assert same_weights(a, b) and identities(a) == identities(b) and not a.training
    assert getattr(a, DROPPED) == getattr(b, DROPPED) and getattr(a, PRUNED) == getattr(b, PRUNED)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(isinstance(m, nn.Identity) for m in teacher.modules()) and not hasattr(teacher, DROPPED)


def test_the_ranking_follows_the_teachers_weights_trained_in_place():
    """A search builds the space on the untrained teacher and trains it in place afterwards."""
    teacher = resnet(20, seed=0)
    family = DerivedFamily(model=teacher, input_shape=INPUT_SHAPE)
    first = family.ranked()
    teacher.load_state_dict(resnet(20, seed=1).state_dict())
    assert family.ranked() == DerivedFamily(model=resnet(20, seed=1), input_shape=INPUT_SHAPE).ranked() != first


def test_the_ranking_is_kept_on_disk_and_read_back_only_for_the_same_weights(tmp_path, monkeypatch):
    import pandas as pd

    from spaces import derive

    cache = tmp_path / "study" / "importance.csv"
    teacher = resnet(20, seed=0)
    first = DerivedFamily(model=teacher, input_shape=INPUT_SHAPE, cache=cache).ranked()
    table = pd.read_csv(cache)
    assert list(table.columns) == list(derive.IMPORTANCE_COLUMNS)
    assert list(table["block"]) == DerivedFamily(model=teacher, input_shape=INPUT_SHAPE).blocks  # model order
    assert len(table) == 7  # ResNet-20's 9 blocks less the two that change the shape
    assert list(table.sort_values("rank")["block"]) == first and (table["importance"] > 0).all()

    def recomputed(*a, **k):
        raise AssertionError("ranked again, where the file holds these weights' ranking")

    monkeypatch.setattr(derive, "block_importance", recomputed)
    assert DerivedFamily(model=resnet(20, seed=0), input_shape=INPUT_SHAPE, cache=cache).ranked() == first
    with pytest.raises(AssertionError, match="ranked again"):  # other weights: the file is not theirs
        DerivedFamily(model=resnet(20, seed=1), input_shape=INPUT_SHAPE, cache=cache).ranked()
    with pytest.raises(AssertionError, match="ranked again"):  # as many blocks, ranked on other inputs
        DerivedFamily(model=resnet(20, seed=0), input_shape=INPUT_SHAPE, cache=cache, calibration_size=8).ranked()


def test_a_teacher_holding_the_stored_cuts_rebuilds_them_not_its_own_ranking():
    """What ``search.pick.bundle.architecture`` does: the cuts decided on the trained weights, set on an untrained
    teacher, give the same student architecture, whatever that teacher's own ranking and norms say."""
    trained, untrained = resnet(20, seed=0), resnet(20, seed=1)
    student = DerivedFamily(model=trained, input_shape=INPUT_SHAPE).build(params(0.5, 0.25))
    other = DerivedFamily(model=untrained, input_shape=INPUT_SHAPE)
    assert other.build(params(0.5, 0.25)).dropped_blocks != student.dropped_blocks  # the test means something
    setattr(untrained, DROPPED, student.dropped_blocks)
    setattr(untrained, PRUNED, student.pruned_channels)
    rebuilt = DerivedFamily(model=untrained, input_shape=INPUT_SHAPE).build(params(0.5, 0.25))
    assert identities(rebuilt) == identities(student) and rebuilt.dropped_blocks == student.dropped_blocks
    assert rebuilt.pruned_channels == student.pruned_channels
    rebuilt.load_state_dict(student.state_dict())
    x = torch.randn(4, *INPUT_SHAPE[1:])
    assert torch.equal(rebuilt(x), student(x))
    with pytest.raises(ValueError, match=r"student.depth: the stored structure drops .* where depth 0.25 drops 2"):
        DerivedFamily(model=untrained, input_shape=INPUT_SHAPE).build(params(0.25, 0.25))


@pytest.mark.parametrize(("bad", "words"), [
    ({"student.depth": 0.3}, ["student.depth", "0.3", "[0.0, 0.25, 0.5]"]),
    ({"student.width": True}, ["student.width", "True", "[0.0, 0.25, 0.5]"]),
])
def test_a_bad_choice_is_one_line_naming_the_key_the_value_and_the_choices(bad, words):
    with pytest.raises(ValueError) as err:
        DerivedFamily(model=resnet(8), input_shape=INPUT_SHAPE).build({**params(), **bad})
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize(("kw", "words"), [
    ({"init": "warm"}, ["space.student.init", "'warm'", "inherit", "scratch"]),
    ({"choices": {"depth": [0.0, 1.5]}}, ["space.student.family.choices.depth", "1.5", "[0, 1]"]),
    ({"choices": {"width": [1.0]}}, ["space.student.family.choices.width", "1.0", "[0, 1)"]),
    ({"choices": {"heads": [0.5]}}, ["space.student.family.choices", "heads", "depth", "width"]),
])
def test_bad_family_config_names_the_key(kw, words):
    with pytest.raises(ValueError) as err:
        DerivedFamily(model=resnet(8), input_shape=INPUT_SHAPE, **kw)
    assert all(w in str(err.value) for w in words), str(err.value)
