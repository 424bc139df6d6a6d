"""Any torchvision data set class by name (``data=torchvision data.name=CIFAR10 data.root=DIR``).

The class is built twice, for its own training and test sets: with ``train=True/False`` where it takes ``train``
(MNIST, CIFAR10, ...), ``split="train"/"test"`` where it takes ``split`` (SVHN, STL10, ...), and once where it
takes neither (FakeData: the test set is then carved, as an image folder's). ``root`` and ``download`` are passed
where the class takes them, and ``options`` (a mapping) as further keywords. Nothing is downloaded unless
``data.download=true``. The validation split is carved from the training set with ``seed``. Its items must be
(PIL image, class index) pairs; they are read like an image folder's images (grey or colour by mode, the
majority's mode, resized to ``image_size`` when set) and normalised with the training split's statistics unless
``mean`` and ``std`` are set. The fingerprint hashes the decoded images and labels with the settings.
"""
from __future__ import annotations

import hashlib
import inspect
from typing import Any

import numpy as np
import torch
from PIL import Image

from ._base import (
    BaseDataModule, Splits, carve_missing, described, channel_stats, normalisation, size)
from ._pixels import normalised, scaled
from .image_folder import image_size_of, majority_grey, pil_array, stack


def dataset_classes() -> list[str]:
    """The data set classes torchvision offers (``torchvision.datasets.__all__``, classes only)."""
    from torchvision import datasets

    return [n for n in datasets.__all__ if isinstance(getattr(datasets, n, None), type) and n != "VisionDataset"]


class TorchvisionData(BaseDataModule):
    """A torchvision data set class by name (see the module's docstring for how it is built and read)."""

    key = "data.name"

    def __init__(self, *, name: str, root: str | None = None, download: bool = False, val_size: int | float = 0.1,
                 test_size: int | float = 0.1, seed: int = 0, image_size: int | list[int] | None = None,
                 mean: list[float] | None = None, std: list[float] | None = None, options: dict | None = None,
                 num_classes: int | None = None, channels: int | None = None) -> None:
        super().__init__(name=name, val_size=val_size, seed=seed, num_classes=num_classes, channels=channels)
        known = dataset_classes()
        if name not in known:
            raise ValueError(f"data.name={name!r}: torchvision.datasets has no such data set class; choose from "
                             f"{', '.join(known)}")
        if not isinstance(download, bool):
            raise ValueError(f"data.download must be true or false, got {download!r}")
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"data.options must be a mapping of keywords for torchvision's {name}, got {options!r}")
        if (mean is None) != (std is None):
            raise ValueError(f"data.mean and data.std go together: both null or both set, got {mean=} and {std=}")
        self.root, self.download, self.options = root, download, dict(options or {})
        self.test_size, self.image_size = size(test_size, key="data.test_size"), image_size_of(image_size)
        self.mean, self.std = mean, std

    def build(self, split: str) -> Any:
        """torchvision's data set for ``split`` (train or test); None for test where the class has no split."""
        from torchvision import datasets

        cls = getattr(datasets, self.name)
        params = inspect.signature(cls).parameters
        kw = dict(self.options)
        if "train" in params:
            kw["train"] = split == "train"
        elif "split" in params:
            kw["split"] = split
        elif split == "test":
            return None
        if "root" in params:
            if not self.root:
                raise ValueError(f"data.root: torchvision's {self.name} reads from a folder; set data.root=DIR")
            kw["root"] = self.root
        if "download" in params:
            kw["download"] = self.download
        try:
            return cls(**kw)
        except Exception as exc:  # noqa: BLE001 - not found, bad keywords, bad split: one line naming the key
            why = (str(exc).strip().splitlines() or [""])[0][:200]
            hint = "" if self.download else "; set data.download=true on a machine with internet, or data.root to " \
                                             "a folder that holds it"
            called = ", ".join(f"{k}={v!r}" for k, v in kw.items())
            raise ValueError(f"data.name={self.name}: torchvision's {self.name}({called}) "
                             f"failed ({type(exc).__name__}: {why}){hint}") from exc

    def _read(self, ds: Any) -> tuple[list[np.ndarray], np.ndarray]:
        arrays, labels = [], []
        for i in range(len(ds)):
            image, label = ds[i]
            index = isinstance(label, (int, np.integer)) and not isinstance(label, bool)
            if not isinstance(image, Image.Image) or not index:
                raise ValueError(f"data.name={self.name}: its items are ({type(image).__name__}, "
                                 f"{type(label).__name__}); "
                                 "need (PIL image, class index): a classification data set")
            arrays.append(pil_array(image, self.image_size))
            labels.append(int(label))
        if not arrays:
            raise ValueError(f"data.name={self.name}: torchvision's {self.name} holds no images")
        return arrays, np.asarray(labels, dtype=np.int64)

    def load(self) -> Splits:
        sets = {split: ds for split in ("train", "test") if (ds := self.build(split)) is not None}
        read = {split: self._read(ds) for split, ds in sets.items()}
        grey = majority_grey(read["train"][0], key=self.key)
        x = {split: stack(arrays, grey, where=f"{self.name} ({split})") for split, (arrays, _) in read.items()}
        y = {split: labels for split, (_, labels) in read.items()}
        x, y, carved = carve_missing(x, y, {"val": self.val_size, "test": self.test_size}, self.seed)
        train = scaled(x["train"])
        stats = normalisation(self.mean, self.std, train.shape[1]) or channel_stats(train)
        h = hashlib.sha256()
        for part in (*(a.tobytes() for s in ("train", "val", "test") for a in (x[s], y[s])),
                     repr((self.name, sorted(self.options.items()), self.val_size, self.test_size, self.seed,
                           self.image_size, self.mean, self.std)).encode()):
            h.update(part)
        t = {s: normalised(train if s == "train" else scaled(x[s]), *stats) for s in x}
        classes = getattr(sets["train"], "classes", None)
        where = f"torchvision {self.name}" + (f" at {self.root}" if self.root else "")
        source = described(where, carved, self.seed)
        return Splits(train_x=t["train"], train_y=torch.from_numpy(y["train"]), val_x=t["val"],
                      val_y=torch.from_numpy(y["val"]), test_x=t["test"], test_y=torch.from_numpy(y["test"]),
                      source=source, classes=tuple(map(str, classes)) if classes else (), mean=stats[0],
                      std=stats[1], fingerprint=h.hexdigest()[:16])
