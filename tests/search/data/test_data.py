"""The data modules: Fashion-MNIST as it always was, image folders and .npz arrays, their fingerprints, and the
one-line errors bad data gets. Every folder and file is made here (Fashion-MNIST's idx files, generated images)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search.data import (CLASSES, DEBIAN_ROOT, MEAN, STD, ArraysData, BaseDataModule, FashionMNISTData,
                         ImageFolderData, Splits, build, load, read_idx)

FMNIST = Path(DEBIAN_ROOT)


@pytest.fixture(scope="module")
def fmnist_test() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's 10k test images (uint8, N x 28 x 28) and labels: material for folders and arrays."""
    return read_idx(FMNIST / "t10k-images-idx3-ubyte.gz"), read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, *, split: str = "train",
                 names: tuple[str, ...] = ("a", "b", "c")) -> list[Path]:
    """``root/<split>/<class name>/<i>.png`` for each image (grey if H x W, colour if H x W x 3)."""
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = root / split / names[int(label)] / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def grey_set(fmnist_test, n: int = 30, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    x, y = fmnist_test
    keep = np.flatnonzero(y < classes)[:n]
    return x[keep], y[keep]


# --------------------------------------------------------------------------- the contract every module keeps


def test_every_data_module_is_a_base_data_module_with_a_public_target():
    from omegaconf import OmegaConf

    from search._checks import CONF

    for path in sorted((CONF / "data").glob("*.yaml")):
        section = OmegaConf.load(path)
        if path.stem == "custom":  # the user's own function, named on the command line
            assert OmegaConf.is_missing(section, "_target_")
            continue
        target = section._target_
        assert not target.split(".")[-1].startswith("_"), path
        cls = __import__("hydra.utils", fromlist=["get_class"]).get_class(target)
        assert issubclass(cls, BaseDataModule), path
    with pytest.raises(TypeError):
        BaseDataModule(name="x", val_size=1)  # abstract: load() is the one method a module writes


@pytest.mark.parametrize(("kw", "key"), [
    ({"val_size": 0}, "data.val_size"), ({"val_size": 1.5}, "data.val_size"), ({"test_size": -1}, "data.test_size"),
    ({"seed": "x"}, "data.seed"), ({"name": "a/b"}, "data.name"), ({"num_classes": 0}, "data.num_classes"),
    ({"image_size": [0, 3]}, "data.image_size"), ({"on_corrupt": "ignore"}, "data.on_corrupt"),
    ({"mean": [0.5]}, "data.mean and data.std"),
])
def test_constructors_reject_bad_values_naming_the_key(kw, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as exc:
        ImageFolderData(root="/x", **kw)
    assert "\n" not in str(exc.value) and "got" in str(exc.value)


# --------------------------------------------------------------------------- Fashion-MNIST, the default


@pytest.fixture(scope="module")
def fmnist() -> Splits:
    return build({"_target_": "search.data.FashionMNISTData", "val_size": 5000, "seed": 0}).splits()


def test_fashion_mnist_is_what_it_was(fmnist):
    assert fmnist.classes == CLASSES and fmnist.num_classes == 10 and fmnist.input_shape == (1, 1, 28, 28)
    assert fmnist.mean == (MEAN,) and fmnist.std == (STD,)
    assert (len(fmnist.train_y), len(fmnist.val_y), len(fmnist.test_y)) == (55000, 5000, 10000)
    # the tensors as the engine always made them: the seeded permutation, (x / 255 - MEAN) / STD
    images = read_idx(FMNIST / "train-images-idx3-ubyte.gz")
    order = np.random.default_rng(0).permutation(60000)
    expected = (torch.from_numpy(images[order[:5000]].astype(np.float32) / 255.0).unsqueeze(1) - MEAN) / STD
    assert torch.equal(fmnist.val_x, expected)
    legacy = build({"name": "fashion-mnist", "root": DEBIAN_ROOT, "val_size": 5000, "seed": 0})  # no _target_
    assert isinstance(legacy, FashionMNISTData)


def test_fashion_mnist_fingerprint_follows_the_split_not_the_name(fmnist):
    again = load(val_size=5000, seed=0)
    assert again.fingerprint == fmnist.fingerprint and len(fmnist.fingerprint) == 16
    assert load(val_size=5000, seed=1).fingerprint != fmnist.fingerprint
    assert load(val_size=4000, seed=0).fingerprint != fmnist.fingerprint
    named = FashionMNISTData(name="other-name", val_size=5000).splits()
    assert named.fingerprint == fmnist.fingerprint


def test_fashion_mnist_resized_and_cut_for_a_model_that_needs_more_pixels_or_less_time(fmnist):
    """``image_size`` (bilinear, every split), ``test_size`` (the first test images) and ``train_size`` (the first
    of the seeded order after the validation split): the validation split stays the same images, the fingerprint
    (teacher caches) follows them."""
    small = FashionMNISTData(val_size=5000, image_size=32, train_size=1000, test_size=300).splits()
    assert small.input_shape == (1, 1, 32, 32) and (len(small.train_y), len(small.val_y), len(small.test_y)) == (
        1000, 5000, 300)
    assert torch.equal(small.test_y, fmnist.test_y[:300])
    assert torch.equal(small.val_y, fmnist.val_y) and small.fingerprint != fmnist.fingerprint
    order = np.random.default_rng(0).permutation(60000)
    labels = torch.from_numpy(read_idx(FMNIST / "train-labels-idx1-ubyte.gz").astype(np.int64))
    assert torch.equal(small.train_y, labels[np.sort(order[5000:6000])])
    up = torch.nn.functional.interpolate(fmnist.val_x[:4] * STD + MEAN, size=(32, 32), mode="bilinear")
    assert torch.allclose(small.val_x[:4], (up - MEAN) / STD, atol=1e-5)
    for bad, key in (({"image_size": 0}, "image_size"), ({"train_size": 55001}, r"train_size .*\(0, 55000\]"),
                     ({"test_size": 0}, "test_size")):
        with pytest.raises(ValueError, match=rf"data\.{key}"):
            FashionMNISTData(val_size=5000, **bad)


def test_a_stated_class_count_is_checked_against_the_data():
    with pytest.raises(ValueError, match=r"data\.num_classes=5, but .* has 10"):
        FashionMNISTData(val_size=5000, num_classes=5).splits()
    with pytest.raises(ValueError, match=r"data\.val_size must be an image count in \(0, 60000\), got 0\.1"):
        FashionMNISTData(val_size=0.1)


# --------------------------------------------------------------------------- image folders


def test_a_grey_folder_reads_as_its_pngs(tmp_path, fmnist_test):
    x, y = grey_set(fmnist_test)
    write_folder(tmp_path, x, y)
    s = ImageFolderData(root=str(tmp_path), val_size=6, test_size=0.2, mean=[MEAN], std=[STD]).splits()
    assert s.classes == ("a", "b", "c") and s.input_shape == (1, 1, 28, 28) and s.channels == 1
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (18, 6, 6)
    # the files in order (class, name), carved by one seeded permutation: validation first, then test
    order = np.argsort(y, kind="stable")
    perm = np.random.default_rng(0).permutation(30)
    for split, idx in (("val", perm[:6]), ("test", perm[6:12]), ("train", np.sort(perm[12:]))):
        src = x[order][idx]
        want = (torch.from_numpy(src.astype(np.float32) / 255.0)[:, None] - MEAN) / STD
        assert torch.allclose(getattr(s, f"{split}_x"), want, atol=1e-6), split
        assert torch.equal(getattr(s, f"{split}_y"), torch.from_numpy(y[order][idx].astype(np.int64)))


def test_val_and_test_folders_are_used_as_given_and_normalisation_is_the_training_splits(tmp_path, fmnist_test):
    x, y = grey_set(fmnist_test, n=45)
    write_folder(tmp_path, x[:30], y[:30])
    write_folder(tmp_path, x[30:40], y[30:40], split="val")
    write_folder(tmp_path, x[40:], y[40:], split="test")
    s = ImageFolderData(root=str(tmp_path)).splits()
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (30, 10, 5) and "carved" not in s.source
    train = x[:30].astype(np.float64) / 255
    assert s.mean == (round(train.mean(), 4),) and s.std == (round(train.std(), 4),)
    assert abs(float(s.train_x.mean())) < 1e-3 and abs(float(s.train_x.std()) - 1) < 1e-2


def test_colour_images_of_any_size_are_resized_when_asked(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(12):
        shape = (20, 24, 3) if i % 2 else (30, 30, 3)
        path = tmp_path / "train" / ("cat", "dog")[i % 2] / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match=r"data\.image_size: .* 2 sizes \(.*30x30: 6.*\); set data\.image_size"):
        ImageFolderData(root=str(tmp_path), val_size=2, test_size=2).splits()
    s = ImageFolderData(root=str(tmp_path), val_size=2, test_size=2, image_size=[16, 20]).splits()
    assert s.input_shape == (1, 3, 16, 20) and s.classes == ("cat", "dog") and len(s.mean) == 3


def test_a_mixed_folder_takes_the_majoritys_mode(tmp_path, fmnist_test, caplog):
    x, y = grey_set(fmnist_test, n=9)
    write_folder(tmp_path, x, y)
    colour = tmp_path / "train" / "a" / "colour.png"
    Image.fromarray(np.stack([x[0]] * 3, axis=2)).save(colour)  # grey content in an RGB file
    with caplog.at_level(logging.INFO, logger="search"):
        s = ImageFolderData(root=str(tmp_path), val_size=1, test_size=1).splits()
    assert s.channels == 1 and "9 grey and 1 colour training images; all read as grey" in caplog.text


def test_corrupt_images_are_skipped_and_counted_or_an_error(tmp_path, fmnist_test, caplog):
    x, y = grey_set(fmnist_test, n=12)
    write_folder(tmp_path, x, y)
    bad = tmp_path / "train" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "train" / "b" / "notes.txt").write_text("not an image by its extension: ignored")
    with caplog.at_level(logging.WARNING, logger="search"):
        s = ImageFolderData(root=str(tmp_path), val_size=2, test_size=2).splits()
    assert len(s.train_y) + len(s.val_y) + len(s.test_y) == 12
    assert "skipped 1 unreadable image(s)" in caplog.text and "broken.png" in caplog.text
    with pytest.raises(ValueError, match=r"data\.on_corrupt=error: .*broken\.png is not a readable image"):
        ImageFolderData(root=str(tmp_path), val_size=2, test_size=2, on_corrupt="error").splits()


@pytest.mark.parametrize("case", ["missing", "no_train", "no_classes", "unreadable_class", "unknown_val_class"])
def test_bad_folders_are_one_line_naming_data_root(tmp_path, fmnist_test, case):
    x, y = grey_set(fmnist_test, n=6)
    root = tmp_path / "d"
    if case != "missing":
        root.mkdir()
    if case == "no_classes":
        (root / "train").mkdir()
    if case in ("unreadable_class", "unknown_val_class"):
        write_folder(root, x, y)
    if case == "unreadable_class":
        (root / "train" / "zz").mkdir()
        (root / "train" / "zz" / "x.png").write_bytes(b"nope")
    if case == "unknown_val_class":
        write_folder(root, x[:2], y[:2], split="val", names=("a", "q", "r"))
    expected = {"missing": "no such folder", "no_train": "no train/ folder", "no_classes": "holds no class folder",
                "unreadable_class": "zz holds no readable image", "unknown_val_class": "val/q is not a class of"}[case]
    with pytest.raises((ValueError, FileNotFoundError)) as exc:
        ImageFolderData(root=str(root), val_size=1, test_size=1).splits()
    assert str(exc.value).startswith("data.root") and expected in str(exc.value) and "\n" not in str(exc.value)


def test_the_fingerprint_changes_with_the_contents_not_the_name(tmp_path, fmnist_test):
    x, y = grey_set(fmnist_test, n=9)
    paths = write_folder(tmp_path, x, y)
    first = ImageFolderData(root=str(tmp_path), val_size=1, test_size=1).splits().fingerprint
    assert ImageFolderData(root=str(tmp_path), name="other", val_size=1, test_size=1).splits().fingerprint == first
    assert ImageFolderData(root=str(tmp_path), val_size=2, test_size=1).splits().fingerprint != first
    Image.fromarray(255 - x[0]).save(paths[0])
    assert ImageFolderData(root=str(tmp_path), val_size=1, test_size=1).splits().fingerprint != first


# --------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_arrays_in_any_layout_give_the_same_tensors(tmp_path, fmnist_test, layout):
    x, y = grey_set(fmnist_test, n=20)
    shaped = {"NHW": x, "NHWC": x[..., None], "NCHW": x[:, None]}[layout]
    np.savez(tmp_path / "d.npz", train_x=shaped, train_y=y)
    s = ArraysData(path=str(tmp_path / "d.npz"), val_size=4, test_size=4, mean=[MEAN], std=[STD]).splits()
    perm = np.random.default_rng(0).permutation(20)
    want = (torch.from_numpy(x[perm[:4]].astype(np.float32) / 255.0)[:, None] - MEAN) / STD
    assert s.input_shape == (1, 1, 28, 28) and torch.allclose(s.val_x, want, atol=1e-6)
    assert s.classes == ("0", "1", "2")


def test_arrays_float_colour_with_class_names_and_their_own_splits(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((10, 3, 8, 8), dtype=np.float32)
    y = np.arange(10) % 4
    np.savez(tmp_path / "d.npz", train_x=x, train_y=y, val_x=x[:3], val_y=y[:3], test_x=x[:2], test_y=y[:2],
             classes=np.array(["w", "x", "y", "z"]))
    s = ArraysData(path=str(tmp_path / "d.npz")).splits()
    assert s.classes == ("w", "x", "y", "z") and s.input_shape == (1, 3, 8, 8) and len(s.train_y) == 10
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    assert s.mean == tuple(round(float(m), 4) for m in mean)


def _npz(tmp_path: Path, **arrays) -> str:
    np.savez(tmp_path / "d.npz", **arrays)
    return str(tmp_path / "d.npz")


@pytest.mark.parametrize(("make", "expected"), [
    (lambda p: _npz(p, train_x=np.zeros((6, 8, 8), np.uint8), train_y=np.arange(6) % 2,
                    val_x=np.zeros((2, 8, 8), np.uint8), val_y=np.array([0, 5])), "val labels span 0..5; allowed 0..1"),
    (lambda p: _npz(p, train_x=np.zeros((6, 8, 8), np.uint8), train_y=np.arange(6) % 2,
                    test_x=np.zeros((2, 9, 8), np.uint8), test_y=np.array([0, 1])), "test images are (1, 9, 8)"),
    (lambda p: _npz(p, train_x=np.zeros((6, 3, 8, 3), np.uint8), train_y=np.arange(6) % 2), "data.layout"),
    (lambda p: _npz(p, train_x=np.zeros((6, 8, 8), np.int32), train_y=np.arange(6)), "dtype int32"),
    (lambda p: _npz(p, train_x=np.zeros((6, 8, 8), np.uint8), train_y=np.arange(5)), "one per image"),
    (lambda p: _npz(p, train_x=np.zeros((6, 8, 8), np.uint8), train_y=-np.arange(6)), "holds label -5"),
    (lambda p: _npz(p, train_x=np.zeros((6, 8, 8), np.uint8)), "missing ['train_y']"),
    (lambda p: _npz(p, train_x=np.zeros((6, 8, 8), np.uint8), train_y=np.arange(6), val_x=np.zeros((1, 8, 8))),
     "val_x without its pair"),
    (lambda p: (p / "d.npz").write_bytes(b"PK\x03\x04 garbage") and str(p / "d.npz"), "not a readable .npz file"),
    (lambda p: str(p / "none.npz"), "no such file"),
])
def test_bad_arrays_are_one_line_naming_the_key(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError)) as exc:
        ArraysData(path=path, val_size=1, test_size=1).splits()
    message = str(exc.value)
    assert message.startswith(("data.path", "data.layout")) and expected in message and "\n" not in message


def test_token_ids_stay_int64_unnormalised_and_carry_their_dtype(tmp_path):
    """An N x L integer array is token ids: int64 in every split, no normalisation, input (1, L) of int64."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", train_x=rng.integers(1, 256, (40, 12)).astype(np.uint8),
             train_y=rng.integers(0, 3, 40), classes=np.array(["a", "b", "c"]))
    s = ArraysData(path=str(tmp_path / "t.npz"), val_size=8, test_size=8).splits()
    assert (s.train_x.dtype, s.val_x.dtype, s.input_dtype, s.input_shape) == (torch.int64, torch.int64, "int64", (1, 12))
    assert s.mean == () and int(s.train_x.min()) >= 1 and s.classes == ("a", "b", "c")
    assert len(s.train_x) == 24


@pytest.mark.parametrize("kw,arrays,expected", [
    ({"mean": [0.0], "std": [1.0]}, {}, "data.mean: .* holds token ids"),
    ({}, {"train_x": -np.ones((10, 4), np.int64)}, "data.path: train_x holds token id -1"),
    ({}, {"val_x": np.ones((4, 5), np.int64), "val_y": np.zeros(4, np.int64)}, r"val_x is int64 \(4, 5\)"),
])
def test_bad_token_ids_are_one_line_naming_the_key(tmp_path, kw, arrays, expected):
    data = {"train_x": np.ones((10, 4), np.int64), "train_y": np.zeros(10, np.int64), **arrays}
    np.savez(tmp_path / "t.npz", **data)
    with pytest.raises(ValueError, match=expected):
        ArraysData(path=str(tmp_path / "t.npz"), val_size=2, test_size=2, **kw).splits()
