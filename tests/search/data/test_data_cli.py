"""Data through the command line: bad data is one line, exit 2 and nothing written; teachers and studies keyed by
the data's contents; torchvision's data sets without a download; a colour image folder end to end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search.data import DEBIAN_ROOT, MEAN, STD
from tests.search.data.test_data import fmnist_test, grey_set, write_folder  # noqa: F401 - fmnist_test is a fixture


# --------------------------------------------------------------------------- through the command line


def _colour_folder(root: Path, n: int = 12, side: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / "train" / ("x", "y", "z")[i % 3] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return root


def _bad_data(tmp_path: Path, fmnist_test, case: str) -> list[str]:
    """The overrides of one bad-data case, its files made under ``tmp_path/data``."""
    data = tmp_path / "data"
    data.mkdir()
    x, y = grey_set(fmnist_test, n=12)
    if case in ("unreadable_class", "corrupt"):
        write_folder(data, x, y)
    if case == "unreadable_class":
        (data / "train" / "zz").mkdir()
        (data / "train" / "zz" / "0.png").write_bytes(b"not a png")
    if case == "corrupt":
        (data / "train" / "a" / "broken.png").write_bytes(b"not a png")
    if case == "labels":
        np.savez(data / "d.npz", train_x=x, train_y=y, val_x=x[:2], val_y=np.array([0, 7]))
    if case == "shapes":
        np.savez(data / "d.npz", train_x=x, train_y=y, test_x=x[:2, :20], test_y=y[:2])
    if case == "channels":
        _colour_folder(data)
    folder = ["data=image_folder", f"data.root={data}", "data.val_size=2", "data.test_size=2"]
    return {
        "unset": ["data=image_folder"],
        "missing": ["data=image_folder", f"data.root={data / 'nowhere'}"],
        "empty": folder,
        "unreadable_class": folder,
        "corrupt": [*folder, "data.on_corrupt=error"],
        "labels": ["data=arrays", f"data.path={data / 'd.npz'}"],
        "shapes": ["data=arrays", f"data.path={data / 'd.npz'}", "data.val_size=2"],
        "head": ["model.net.num_classes=5"],
        "stated_classes": ["data.num_classes=5"],
        "channels": [*folder, "model=resnet8", "model.net.in_channels=1"],
    }[case]


@pytest.mark.parametrize(("case", "expected"), [
    ("unset", ["data.root", "not set"]),
    ("missing", ["data.root=", "nowhere", "no such folder"]),
    ("empty", ["data.root=", "no train/ folder"]),
    ("unreadable_class", ["data.root", "zz holds no readable image"]),
    ("corrupt", ["data.on_corrupt=error", "broken.png", "not a readable image"]),
    ("labels", ["data.path", "val labels span 0..7", "allowed 0..2"]),
    ("shapes", ["data.path", "test images are (1, 20, 28)", "(1, 28, 28)"]),
    ("head", ["model.net", "(1, 5)", "10 classes"]),
    ("stated_classes", ["data.num_classes=5", "has 10"]),
    ("channels", ["model.net", "ResNet", "(1, 3, 12, 12)", "in_channels=3"]),
])
def test_bad_data_is_one_line_exit_2_and_nothing_written(tmp_path, fmnist_test, capsys, case, expected):
    from search.cli import entry
    from search.run import run

    overrides = _bad_data(tmp_path, fmnist_test, case)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        entry(run, argv=["experiment=smoke", f"results_dir={tmp_path / 'results'}", *overrides])
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert exc.value.code == 2 and len(lines) == 1, lines
    for word in expected:
        assert word in lines[0], (word, lines[0])
    assert sorted(tmp_path.rglob("*")) == before  # no results/, nothing else


# --------------------------------------------------------------------------- caches keyed by the contents


def test_changing_a_folders_contents_trains_a_new_teacher(tmp_path, fmnist_test):
    """The teacher cache follows the data's fingerprint: the same folder reuses its teacher, the same folder
    name (and data.name) with one image changed trains a new one. One training step each (16 images, batch 128)."""
    from search.app import prepare
    from search.cli import compose_checked

    x, y = grey_set(fmnist_test, n=24)
    paths = write_folder(tmp_path / "data", x, y)
    cfg = lambda: compose_checked([  # noqa: E731 - a fresh config per run: setup fills data.num_classes in it
        "experiment=smoke", "data=image_folder", f"data.root={tmp_path / 'data'}", "data.val_size=4",
        "data.test_size=4", "data.name=tiny", f"results_dir={tmp_path / 'results'}"])
    first = prepare(cfg())
    assert first.source.startswith("trained now") and first.setup.splits.input_shape == (1, 1, 28, 28)
    assert first.setup.cfg.data.num_classes == 3 and first.setup.cfg.model.net.num_classes == 3
    assert prepare(cfg()).source.startswith("cache")
    Image.fromarray(255 - x[5]).save(paths[5])
    again = prepare(cfg())
    assert again.source.startswith("trained now") and again.setup.splits.fingerprint != first.setup.splits.fingerprint
    assert len(list((tmp_path / "results" / "cache" / "teachers").glob("*.pt"))) == 2


def test_a_study_stored_before_the_data_options_resumes_on_fashion_mnist(tmp_path):
    """Its config.yaml names no data._target_, num_classes or channels: read as Fashion-MNIST's, not as changes."""
    import json

    from search.cli import compose_checked
    from search.loop.study import check_resume

    legacy = {"name": "fashion-mnist", "root": DEBIAN_ROOT, "download_dir": str(tmp_path / "results" / "data"),
              "val_size": 1000, "seed": 0}
    cfg = compose_checked(["experiment=smoke", f"results_dir={tmp_path / 'results'}", "study.resume=force"])
    (tmp_path / "config.yaml").write_text(json.dumps({"data": legacy}))
    assert not [k for k in check_resume(cfg, tmp_path) if k.startswith("data.")]
    (tmp_path / "config.yaml").write_text(json.dumps({"data": {**legacy, "val_size": 2000}}))
    assert [k for k in check_resume(cfg, tmp_path) if k.startswith("data.")] == ["data.val_size"]


def test_the_model_card_says_the_datas_normalisation():
    from search.pick.card import scaling

    assert scaling({}) == f"`(pixel / 255 - {MEAN}) / {STD}`"  # a report.json from before: Fashion-MNIST's
    assert scaling({"normalisation": {"mean": [0.5], "std": [0.25]}}) == "`(pixel / 255 - 0.5) / 0.25`"
    three = scaling({"normalisation": {"mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 3.0]}})
    assert "per channel" in three and "[0.1, 0.2, 0.3]" in three and "[1.0, 2.0, 3.0]" in three


# --------------------------------------------------------------------------- torchvision (nothing downloaded)


def test_torchvision_fake_data_reads_as_colour_splits():
    from search.data import TorchvisionData

    options = {"size": 40, "image_size": [3, 10, 12], "num_classes": 4}
    s = TorchvisionData(name="FakeData", options=options, val_size=8, test_size=0.25).splits()
    assert s.input_shape == (1, 3, 10, 12) and (len(s.train_y), len(s.val_y), len(s.test_y)) == (22, 8, 10)
    assert "val and test carved" in s.source and len(s.mean) == 3
    again = TorchvisionData(name="FakeData", options={**options, "random_offset": 1}, val_size=8, test_size=0.25)
    assert again.splits().fingerprint != s.fingerprint  # other images, another fingerprint
    small = TorchvisionData(name="FakeData", options=options, val_size=8, test_size=0.25, image_size=6).splits()
    assert small.input_shape == (1, 3, 6, 6)


def test_torchvision_errors_name_the_key_and_download_nothing(tmp_path):
    from search.data import TorchvisionData

    with pytest.raises(ValueError, match=r"data\.name='CIFAR11': torchvision\.datasets has no such .*CIFAR10"):
        TorchvisionData(name="CIFAR11")
    with pytest.raises(ValueError, match=r"data\.name=CIFAR10: .*failed \(RuntimeError: Dataset not found.*"
                                         r"data\.download=true"):
        TorchvisionData(name="CIFAR10", root=str(tmp_path / "none")).splits()
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())
    with pytest.raises(ValueError, match=r"data\.download must be true or false"):
        TorchvisionData(name="CIFAR10", download="yes")


def test_an_unknown_torchvision_class_is_one_line_exit_2(tmp_path, capsys):
    from search.cli import entry
    from search.run import run

    with pytest.raises(SystemExit) as exc:
        entry(run, argv=["experiment=smoke", f"results_dir={tmp_path / 'results'}", "data=torchvision",
                         "data.name=NoSuchSet"])
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert exc.value.code == 2 and len(lines) == 1 and "data.name='NoSuchSet'" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_an_image_folder_study_resumes_once_its_data_is_read(tmp_path, fmnist_test):
    """The stored config holds the class count and channels read from the data; a rerun compares against them
    after reading the data (search/process.py: setup, then check_resume), so the same command resumes."""
    from search.app import load_data
    from search.cli import compose_checked
    from search.loop.study import check_resume, keep_config

    x, y = grey_set(fmnist_test, n=12)
    write_folder(tmp_path / "data", x, y)
    overrides = ["experiment=smoke", "data=image_folder", f"data.root={tmp_path / 'data'}", "data.val_size=2",
                 "data.test_size=2", "model=resnet8"]
    first = compose_checked(overrides)
    load_data(first)
    keep_config(first, tmp_path, {})
    stored = (tmp_path / "config.yaml").read_text()
    assert "num_classes: 3" in stored and "in_channels: 1" in stored
    again = compose_checked([*overrides, "study.n_trials=9"])
    assert "model.net.num_classes" in check_resume(compose_checked([*overrides, "study.resume=force"]), tmp_path)
    load_data(again)
    assert check_resume(again, tmp_path) == {}


@pytest.mark.slow
def test_a_colour_image_folder_runs_end_to_end(tmp_path):
    """python -m search on 32x32 colour images of 4 classes (not Fashion-MNIST's shape or count): search, report and
    a verified pick whose bundle and card carry the data's shape, classes and normalisation."""
    from search.cli import compose_checked
    from search.pick.bundle import load_model
    from search.pick.picker import pick
    from search.run import run

    rng = np.random.default_rng(0)
    for i in range(64):
        k = i % 4  # a bright square in the class's quadrant, over dark noise
        image = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
        image[(k // 2) * 16 + 3:(k // 2) * 16 + 13, (k % 2) * 16 + 3:(k % 2) * 16 + 13] = (220, 40 * k, 200 - 40 * k)
        path = tmp_path / "data" / ("test" if i >= 48 else "train") / f"class{k}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    overrides = ["experiment=smoke", "data=image_folder", f"data.root={tmp_path / 'data'}", "data.val_size=8",
                 "data.name=squares", f"results_dir={tmp_path / 'results'}", "study.n_trials=1"]
    out = run(compose_checked(overrides))
    assert (out / "report.html").is_file() and (out / "pareto.csv").is_file()
    picked = pick(compose_checked([*overrides, "pick.trial=0"]))
    report = picked.report
    assert picked.verified, report["reasons"]
    assert report["input_shape"] == [1, 3, 32, 32] and report["num_classes"] == 4
    assert report["classes"] == ["class0", "class1", "class2", "class3"] and len(report["normalisation"]["mean"]) == 3
    assert "per channel c" in (picked.path / "README.md").read_text()
    assert load_model(picked.path)(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
