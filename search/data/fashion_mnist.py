"""Fashion-MNIST from its idx.gz files: Debian's package, a user's folder, or torchvision's downloader.

The search scores a fixed, seeded validation split carved from the 60k training images; the 10k test
set is kept for final reports (pick) only. ``image_size`` resizes every split (bilinear), for a model that needs more
than 28 x 28 pixels (torchvision's Inception v3, AlexNet, VGG); ``train_size`` keeps that many of the training
images (the first of the seeded order after the validation split) and ``test_size`` the first that many test images,
for a short budget on a costly model.
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import torch

from ._base import BaseDataModule, Splits, digest
from .image_folder import image_size_of

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# Per-pixel statistics of the Fashion-MNIST training images (computed from the 60k set).
MEAN, STD = 0.2860, 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: Path) -> np.ndarray:
    """An idx(.gz) file as a uint8 array: magic (2 zero bytes, dtype, ndim), big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _missing(folder: Path) -> list[str]:
    return [name for name in FILES.values() if not (folder / name).is_file()]


def _download(target: Path) -> Path:
    """torchvision's downloader (needs internet); the raw idx.gz files end up in ``target``/FashionMNIST/raw."""
    from torchvision.datasets import FashionMNIST

    created = not target.exists()
    try:
        FashionMNIST(str(target), train=True, download=True)
    except Exception:
        if created:
            shutil.rmtree(target, ignore_errors=True)  # leave nothing half-written
        raise
    return target / "FashionMNIST" / "raw"


def locate(root: str | None, download_dir: str | None) -> Path:
    """The first folder holding all four files; a clear error listing every place tried otherwise."""
    tried = []
    if root:
        folder = Path(root)
        missing = _missing(folder)
        if not missing:
            return folder
        tried.append(f"data.root={folder} (missing {', '.join(missing)})")
    if download_dir:
        try:
            return _download(Path(download_dir))
        except Exception as exc:
            tried.append(f"data.download_dir={download_dir} (torchvision download failed: {type(exc).__name__}: {exc})")
    raise FileNotFoundError(
        "data.root: Fashion-MNIST not found; tried " + ("; ".join(tried) or "nothing (data.root and data.download_dir are null)")
        + ". Get it with `apt-get install dataset-fashion-mnist` (Debian), set data.root=<folder with the 4 idx.gz files>,"
        " or set data.download_dir=<folder> on a machine with internet."
    )


def _to_tensor(images: np.ndarray, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    if image_size is not None and tuple(x.shape[-2:]) != image_size:  # a few thousand at a time: bounded memory
        x = torch.cat([torch.nn.functional.interpolate(part, size=image_size, mode="bilinear", align_corners=False)
                       for part in x.split(4096)])
    return (x - MEAN) / STD


def load(*, root: str | None = DEBIAN_ROOT, download_dir: str | None = None, val_size: int = 5000, seed: int = 0,
         image_size: tuple[int, int] | None = None, train_size: int | None = None,
         test_size: int | None = None) -> Splits:
    if not 0 < val_size < 60000:
        raise ValueError(f"data.val_size must be in (0, 60000), got {val_size!r}")
    folder = locate(root, download_dir)
    arrays = {key: read_idx(folder / name) for key, name in FILES.items()}
    order = np.random.default_rng(seed).permutation(len(arrays["train_images"]))
    kept = order[val_size:] if train_size is None else order[val_size:val_size + train_size]
    val_idx, train_idx = order[:val_size], np.sort(kept)
    images, labels = arrays["train_images"], torch.from_numpy(arrays["train_labels"].astype(np.int64))
    # the fingerprint (cache keys) names a setting only where it is set: the default's teachers keep their keys
    shaped = [f"{k}={v}" for k, v in (("image_size", image_size), ("train_size", train_size),
                                       ("test_size", test_size)) if v is not None]
    tests = slice(test_size)
    return Splits(
        train_x=_to_tensor(images[train_idx], image_size), train_y=labels[train_idx],
        val_x=_to_tensor(images[val_idx], image_size), val_y=labels[val_idx],
        test_x=_to_tensor(arrays["test_images"][tests], image_size),
        test_y=torch.from_numpy(arrays["test_labels"][tests].astype(np.int64)),
        source=str(folder), classes=CLASSES, mean=(MEAN,), std=(STD,),
        fingerprint=digest(*((folder / name).read_bytes() for name in FILES.values()), f"val_size={val_size}",
                           f"seed={seed}", *shaped),
    )


class FashionMNISTData(BaseDataModule):
    """Fashion-MNIST (``data=fashion_mnist``, the default): 28 x 28 grey images of 10 classes, normalised with
    the training set's statistics (``MEAN``, ``STD``); ``val_size`` images carved from the 60k training images
    with ``seed``; the 10k test images as the test split. ``image_size``: null (28 x 28), a side or [height, width]
    (every split resized, bilinear); ``train_size`` / ``test_size``: null (every other training image, every test
    image) or how many to keep."""

    key = "data.root"

    def __init__(self, *, name: str = "fashion-mnist", root: str | None = DEBIAN_ROOT, download_dir: str | None = None,
                 val_size: int = 5000, seed: int = 0, num_classes: int | None = None,
                 channels: int | None = None, image_size: int | list[int] | None = None,
                 train_size: int | None = None, test_size: int | None = None) -> None:
        if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 < val_size < 60000:
            raise ValueError(f"data.val_size must be an image count in (0, 60000), got {val_size!r}")
        if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int)
                                       or not 0 < train_size <= 60000 - val_size):
            raise ValueError(f"data.train_size must be null (every training image) or an image count in "
                             f"(0, {60000 - val_size}] (60000 less data.val_size), got {train_size!r}")
        if test_size is not None and (isinstance(test_size, bool) or not isinstance(test_size, int)
                                      or not 0 < test_size <= 10000):
            raise ValueError(f"data.test_size must be null (the 10,000 test images) or a count in (0, 10000], got "
                             f"{test_size!r}")
        super().__init__(name=name, val_size=val_size, seed=seed, num_classes=num_classes, channels=channels)
        self.root, self.download_dir = root, download_dir
        self.image_size, self.train_size, self.test_size = image_size_of(image_size), train_size, test_size

    def load(self) -> Splits:
        return load(root=self.root, download_dir=self.download_dir, val_size=self.val_size, seed=self.seed,
                    image_size=self.image_size, train_size=self.train_size, test_size=self.test_size)
