"""Images and labels as arrays in one ``.npz`` file (``data=arrays data.path=FILE.npz``).

The file holds ``train_x`` and ``train_y``, optionally ``val_x``/``val_y`` and ``test_x``/``test_y`` (each pair
or neither; a split absent is carved from train with ``seed``, as ``image_folder`` does: validation first, then
test), and optionally ``classes`` (the class names, label i is ``classes[i]``; without it the classes are
``"0"`` ... up to train_y's largest label). Write one with ``numpy.savez(path, train_x=..., train_y=...)``.

Images: uint8 (pixels 0-255, divided by 255) or float (taken as they are), shaped N x H x W (grey),
N x H x W x C or N x C x H x W. The layout of 4-d arrays is told by which axis is small: channels last when the
last axis has at most 4 entries and axis 1 more, channels first the other way round; when both or neither are
small (say 4 x 4 images of 3 channels) set ``data.layout`` (NHWC or NCHW). Labels: integers, one per image.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from ._base import (
    BaseDataModule, Splits, carve_missing, described, channel_stats, normalisation, normalised, scaled, size)

KEYS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "classes")
LAYOUTS = ("NHWC", "NCHW")
SMALL = 4  # at most this many channels along the axis that holds them: grey, RGB, RGBA


def layout_of(shape: tuple[int, ...], layout: str | None, key: str) -> str:
    """NHW, NHWC or NCHW for an image array of ``shape`` (``layout`` when set for a 4-d one)."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        raise ValueError(f"data.path: {key} has shape {shape}; images must be N x H x W, N x H x W x C or "
                         "N x C x H x W")
    if layout is not None:
        return layout
    last, second = shape[3] <= SMALL, shape[1] <= SMALL
    if last != second:
        return "NHWC" if last else "NCHW"
    raise ValueError(f"data.layout: cannot tell where the channels of {key} {shape} are; set data.layout=NHWC or "
                     "data.layout=NCHW")


def to_nchw(a: np.ndarray, layout: str) -> np.ndarray:
    return {"NHW": lambda: a[:, None], "NHWC": lambda: a.transpose(0, 3, 1, 2), "NCHW": lambda: a}[layout]()


class ArraysData(BaseDataModule):
    """Arrays in a ``.npz`` file (see the module's docstring for the keys and the layout rule)."""

    key = "data.path"

    def __init__(self, *, path: str, name: str = "arrays", val_size: int | float = 0.1, test_size: int | float = 0.1,
                 seed: int = 0, layout: str | None = None, mean: list[float] | None = None,
                 std: list[float] | None = None, num_classes: int | None = None, channels: int | None = None) -> None:
        super().__init__(name=name, val_size=val_size, seed=seed, num_classes=num_classes, channels=channels)
        if not isinstance(path, str) or not path:
            raise ValueError("data.path must be a .npz file (numpy.savez(path, train_x=..., train_y=...)), "
                             f"got {path!r}")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"data.layout must be null (told from the shape) or one of {list(LAYOUTS)}, "
                             f"got {layout!r}")
        if (mean is None) != (std is None):
            raise ValueError(f"data.mean and data.std go together: both null or both set, got {mean=} and {std=}")
        self.path, self.test_size, self.layout = Path(path), size(test_size, key="data.test_size"), layout
        self.mean, self.std = mean, std

    def read(self) -> dict[str, np.ndarray]:
        """The file's arrays by name, checked for the keys allowed; a missing or unreadable file is one error."""
        if not self.path.is_file():
            raise FileNotFoundError(f"data.path={self.path}: no such file")
        try:
            with np.load(self.path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"data.path={self.path}: not a readable .npz file of arrays ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        unknown = sorted(set(arrays) - set(KEYS))
        missing = [k for k in ("train_x", "train_y") if k not in arrays]
        halves = [f"{s}_x" if f"{s}_x" in arrays else f"{s}_y" for s in ("val", "test")
                  if (f"{s}_x" in arrays) != (f"{s}_y" in arrays)]
        if unknown or missing or halves:
            raise ValueError(f"data.path={self.path}: holds {sorted(arrays)}; " + "; ".join(
                ([f"missing {missing}"] if missing else []) + ([f"unexpected {unknown}"] if unknown else [])
                + [f"{k} without its pair" for k in halves]) + f"; allowed: {list(KEYS)}")
        return arrays

    def load(self) -> Splits:
        arrays = self.read()
        x, y = {}, {}
        for split in ("train", "val", "test"):
            if f"{split}_x" in arrays:
                x[split], y[split] = self._images(arrays, split), self._labels(arrays, split)
        x, y, carved = carve_missing(x, y, {"val": self.val_size, "test": self.test_size}, self.seed)
        classes = self._classes(arrays, y["train"])
        train = scaled(x["train"])
        stats = normalisation(self.mean, self.std, train.shape[1]) or channel_stats(train)
        h = hashlib.sha256(self.path.read_bytes())
        for part in (self.val_size, self.test_size, self.seed, self.layout, self.mean, self.std):
            h.update(repr(part).encode())
        t = {s: normalised(train if s == "train" else scaled(x[s]), *stats) for s in x}
        source = described(str(self.path), carved, self.seed)
        return Splits(train_x=t["train"], train_y=torch.from_numpy(y["train"]), val_x=t["val"],
                      val_y=torch.from_numpy(y["val"]), test_x=t["test"], test_y=torch.from_numpy(y["test"]),
                      source=source, classes=classes, mean=stats[0], std=stats[1], fingerprint=h.hexdigest()[:16])

    def _images(self, arrays: dict[str, np.ndarray], split: str) -> np.ndarray:
        key = f"{split}_x"
        a = arrays[key]
        if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"data.path: {key} has dtype {a.dtype}; images must be uint8 (0-255) or float")
        return to_nchw(a, layout_of(a.shape, self.layout, key))

    def _labels(self, arrays: dict[str, np.ndarray], split: str) -> np.ndarray:
        key, images = f"{split}_y", arrays[f"{split}_x"]
        y = arrays[key]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(images):
            raise ValueError(f"data.path: {key} is {y.dtype} {y.shape}; labels must be integers, one per image of "
                             f"{split}_x ({len(images)})")
        if len(y) and y.min() < 0:
            raise ValueError(f"data.path: {key} holds label {int(y.min())}; labels are 0, 1, ... (class indices)")
        return y.astype(np.int64)

    def _classes(self, arrays: dict[str, np.ndarray], train_y: np.ndarray) -> tuple[str, ...]:
        if "classes" not in arrays:
            return tuple(str(i) for i in range(int(train_y.max()) + 1))
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "US" or len(names) == 0:
            raise ValueError(f"data.path: classes is {names.dtype} {names.shape}; it must be a 1-d array of names")
        return tuple(str(n) for n in names.tolist())
