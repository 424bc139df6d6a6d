"""data=custom: a user's own function (tests/search/data/custom_data.py) returning pairs, data sets or Splits; the same
images give the same tensors as data=arrays; bad loaders are one line naming data._target_."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from search._checks import CONF
from search.data import ArraysData, CustomData, build

HERE = "tests.search.data.custom_data"


def custom(target: str, **keys):
    return build(OmegaConf.merge(OmegaConf.load(CONF / "data" / "custom.yaml"), {"_target_": f"{HERE}.{target}",
                                                                                  **keys}))


def test_a_function_target_builds_custom_data_and_its_extra_keys_are_its_keywords():
    module = custom("pairs", n=40)
    assert isinstance(module, CustomData) and module.kwargs == {"n": 40}
    s = module.splits()
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (32, 4, 4)  # 0.1 and 0.1 of 40, carved
    assert s.classes == ("top", "trouser", "pullover") and s.input_shape == (1, 1, 28, 28)
    assert "val and test carved" in s.source and s.source.startswith(f"{HERE}.pairs()")
    assert custom("pairs", n=41).splits().fingerprint != s.fingerprint  # the keywords are in the fingerprint


def test_pairs_give_the_tensors_data_arrays_gives_for_the_same_images(tmp_path):
    from tests.search.data.custom_data import images

    x, y = images(60)
    np.savez(tmp_path / "d.npz", train_x=x, train_y=y)
    a = ArraysData(path=str(tmp_path / "d.npz")).splits()
    c = custom("pairs", n=60).splits()
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, f"{split}_x"), getattr(c, f"{split}_x")), split
        assert torch.equal(getattr(a, f"{split}_y"), getattr(c, f"{split}_y")), split
    assert a.mean == c.mean and a.std == c.std


@pytest.mark.parametrize("kind", ["pil", "tensor"])
def test_a_dataset_of_items_reads_as_the_same_images(kind):
    pairs = custom("pairs").splits()
    s = custom("dataset", kind=kind).splits()
    assert torch.equal(s.train_y, pairs.train_y) and s.input_shape == (1, 1, 28, 28)
    tol = 0 if kind == "pil" else 1e-5  # uint8 / 255 against the loader's own float64 / 255
    assert torch.allclose(s.train_x, pairs.train_x, atol=tol, rtol=0)
    assert s.classes == ("0", "1", "2")  # no names given: the labels'


def test_returned_splits_are_kept_and_a_test_split_given_is_not_carved():
    s = custom("splits").splits()
    assert s.source == "by hand" and len(s.train_x) == 20
    given = custom("pairs", with_test=True).splits()
    assert len(given.test_x) == 12 and given.source.endswith("(val carved from train with seed 0)")


@pytest.mark.parametrize(("target", "keys", "words"), [
    ("nothing_here", {}, ["data._target_", "has no 'nothing_here'"]),
    ("ROOT", {}, ["data._target_", "neither a search.data.BaseDataModule class nor a function"]),
    ("bad", {"case": "list"}, ["returned list", "it must return a search.data.Splits, or a mapping"]),
    ("bad", {"case": "no_train"}, ["returned ['val']", "'train'"]),
    ("bad", {"case": "unknown"}, ["unexpected keys ['extra']", "allowed"]),
    ("bad", {"case": "float_labels"}, ["'train' labels are float32", "need integers"]),
    ("bad", {"case": "negative"}, ["holds label -1"]),
    ("bad", {"case": "mixed"}, ["'train' items' images are shaped", "need one shape"]),
    ("bad", {"case": "raises"}, [f"{HERE}.bad(case='raises') failed (OSError: disk gone)"]),
    ("pairs", {"n": "many"}, ["failed (TypeError"]),
])
def test_bad_loaders_are_one_line_naming_data_target(target, keys, words):
    with pytest.raises(ValueError) as exc:
        custom(target, **keys).splits()
    message = str(exc.value)
    assert "\n" not in message and "data._target_" in message, message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(("overrides", "words"), [
    (["data=custom"], ["data._target_: not set"]),
    (["data=custom", "data._target_=no_such_module.load"], ["cannot import 'no_such_module.load'"]),
    (["data=custom", f"data._target_={HERE}.pairs", "+data.n=5", "data.val_size=3", "data.test_size=3"],
     ["data.val_size=3, data.test_size=3: 6 images carved from 5"]),
])
def test_bad_custom_data_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, overrides, words):
    from search.cli import entry
    from search.run import run

    with pytest.raises(SystemExit) as exc:
        entry(run, argv=["experiment=smoke", f"results_dir={tmp_path / 'results'}", *overrides])
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert exc.value.code == 2 and len(lines) == 1, lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert list(tmp_path.iterdir()) == []


def test_a_custom_loader_sizes_the_model_and_its_study_resumes(tmp_path):
    """The model follows what the function returned (3 classes, 1 channel); the stored config names the function and
    its keywords, so the same command resumes and another keyword does not."""
    from search.app import load_data
    from search.cli import compose_checked
    from search.loop.study import check_resume, keep_config

    overrides = ["experiment=smoke", "data=custom", f"data._target_={HERE}.pairs", "+data.n=40", "data.val_size=4",
                 "data.test_size=4", "model=resnet8"]
    first = compose_checked(overrides)
    load_data(first)
    assert first.model.net.num_classes == 3 and first.model.net.in_channels == 1
    keep_config(first, tmp_path, {})
    again = compose_checked(overrides)
    load_data(again)
    assert check_resume(again, tmp_path) == {}
    other = compose_checked([*overrides, "data.n=41"])
    load_data(other)
    with pytest.raises(ValueError, match="data.n: 40 -> 41"):
        check_resume(other, tmp_path)
