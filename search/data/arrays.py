"""Images and labels as arrays in one ``.npz`` file (``data=arrays data.path=FILE.npz``) or a folder of ``.npy``
files, one per array (``data.path=DIR``: ``DIR/train_x.npy``, ``DIR/train_y.npy``, ...).

The file holds ``train_x`` and ``train_y``, optionally ``val_x``/``val_y`` and ``test_x``/``test_y`` (each pair
or neither; a split absent is carved from train with ``seed``, as ``image_folder`` does: validation first, then
test), and optionally ``classes`` (the class names, label i is ``classes[i]``; without it the classes are
``"0"`` ... up to train_y's largest label). Write one with ``numpy.savez(path, train_x=..., train_y=...)``, or a
folder with ``numpy.save(DIR / "train_x.npy", ...)`` and so on.

Streaming (``stream``, ``workers``, ``memory_limit_mb``; see ``_stream.py``) needs the folder: its ``.npy`` files
are memory-mapped (``numpy.load(mmap_mode="r")``) and each batch reads its rows. An ``.npz`` is a zip archive that
cannot be memory-mapped: ``stream: true`` on one is an error, ``auto`` keeps it in memory.

Images: uint8 (pixels 0-255, divided by 255) or float (taken as they are), shaped N x H x W (grey),
N x H x W x C or N x C x H x W. The layout of 4-d arrays is told by which axis is small: channels last when the
last axis has at most 4 entries and axis 1 more, channels first the other way round; when both or neither are
small (say 4 x 4 images of 3 channels) set ``data.layout`` (NHWC or NCHW). Labels: integers, one per image.

Token ids: an integer array N x L (int8 to int64, or unsigned) is a batch of L-token sequences for a model that
embeds them (``search.models.TextTransformer``, a Hugging Face ``input_ids`` model): kept as int64, neither scaled
nor normalised, held in memory, and carried as int64 through training, calibration, the ONNX model (an int64
input), latency and pick.
"""
from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._base import (
    BaseDataModule, Splits, carve_missing, described, channel_stats, normalisation, size)
from ._pixels import normalised, scaled
from ._stream import Streamed, Streaming, channel_stats_streamed, float32_bytes

log = logging.getLogger("search")

KEYS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "classes")
LAYOUTS = ("NHWC", "NCHW")
SMALL = 4  # at most this many channels along the axis that holds them: grey, RGB, RGBA
HASH_BLOCK = 2**24  # bytes hashed at a time: a file larger than memory is never read whole


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


def _tokens(a: np.ndarray) -> bool:
    """An N x L integer array: token ids, not images."""
    return a.ndim == 2 and np.issubdtype(a.dtype, np.integer)


def to_nchw(a: np.ndarray, layout: str) -> np.ndarray:
    return {"NHW": lambda: a[:, None], "NHWC": lambda: a.transpose(0, 3, 1, 2), "NCHW": lambda: a}[layout]()


@dataclass(frozen=True)
class _Rows:
    """Rows of a ``.npy`` file read on demand (a streamed split's ``read``): positions -> N x C x H x W, from a
    memory map opened per read (so a DataLoader worker holds a path, not the map)."""

    path: str
    layout: str

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        return to_nchw(np.load(self.path, mmap_mode="r", allow_pickle=False)[positions], self.layout)


def file_digest(h: "hashlib._Hash", path: Path) -> None:
    """Feed ``path``'s bytes into ``h`` a block at a time."""
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)


class ArraysData(BaseDataModule):
    """Arrays in a ``.npz`` file or a folder of ``.npy`` files (see the module's docstring for the keys, the layout
    rule and streaming)."""

    key = "data.path"

    def __init__(self, *, path: str, name: str = "arrays", val_size: int | float = 0.1, test_size: int | float = 0.1,
                 seed: int = 0, layout: str | None = None, mean: list[float] | None = None,
                 std: list[float] | None = None, num_classes: int | None = None, channels: int | None = None,
                 stream: bool | str = "auto", workers: int = 0, memory_limit_mb: float = 2048) -> None:
        super().__init__(name=name, val_size=val_size, seed=seed, num_classes=num_classes, channels=channels)
        self.streaming = Streaming(stream=stream, workers=workers, memory_limit_mb=memory_limit_mb)
        if not isinstance(path, str) or not path:
            raise ValueError("data.path must be a .npz file (numpy.savez(path, train_x=..., train_y=...)) or a folder "
                             f"of .npy files (DIR/train_x.npy, DIR/train_y.npy, ...), got {path!r}")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"data.layout must be null (told from the shape) or one of {list(LAYOUTS)}, "
                             f"got {layout!r}")
        if (mean is None) != (std is None):
            raise ValueError(f"data.mean and data.std go together: both null or both set, got {mean=} and {std=}")
        self.path, self.test_size, self.layout = Path(path), size(test_size, key="data.test_size"), layout
        self.mean, self.std = mean, std

    def read(self) -> dict[str, np.ndarray]:
        """The file's arrays by name (a folder's: memory-mapped), checked for the keys allowed; a missing or
        unreadable file is one error."""
        if self.path.is_dir():
            arrays = self._folder()
        elif not self.path.is_file():
            raise FileNotFoundError(f"data.path={self.path}: no such file or folder")
        else:
            arrays = self._npz()
        unknown = sorted(set(arrays) - set(KEYS))
        missing = [k for k in ("train_x", "train_y") if k not in arrays]
        halves = [f"{s}_x" if f"{s}_x" in arrays else f"{s}_y" for s in ("val", "test")
                  if (f"{s}_x" in arrays) != (f"{s}_y" in arrays)]
        if unknown or missing or halves:
            raise ValueError(f"data.path={self.path}: holds {sorted(arrays)}; " + "; ".join(
                ([f"missing {missing}"] if missing else []) + ([f"unexpected {unknown}"] if unknown else [])
                + [f"{k} without its pair" for k in halves]) + f"; allowed: {list(KEYS)}")
        return arrays

    def _folder(self) -> dict[str, np.ndarray]:
        arrays = {}
        for path in sorted(self.path.glob("*.npy")):
            try:
                arrays[path.stem] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise ValueError(f"data.path={self.path}: {path.name} is not a readable .npy file "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        return arrays

    def _npz(self) -> dict[str, np.ndarray]:
        if self.streaming.stream is True:
            raise ValueError(f"data.stream=true: data.path={self.path} is an .npz (a zip archive), which cannot be "
                             "memory-mapped; save each array as DIR/<key>.npy (numpy.save) and set data.path=DIR")
        try:
            with np.load(self.path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"data.path={self.path}: not a readable .npz file of arrays ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        return arrays

    def load(self) -> Splits:
        arrays = self.read()
        if _tokens(arrays["train_x"]):
            return self._token_splits(arrays)
        x, y = {}, {}
        for split in ("train", "val", "test"):
            if f"{split}_x" in arrays:
                x[split], y[split] = self._images(arrays, split), self._labels(arrays, split)
        stream = self.path.is_dir() and self.streaming.wanted(float32_bytes(len(x["train"]), x["train"].shape[1:]))
        own = {split: (str(self.path / f"{split}_x.npy"), layout_of(arrays[f"{split}_x"].shape, self.layout,
                                                                     f"{split}_x")) for split in x}
        if stream:
            x = {split: np.arange(len(a)) for split, a in x.items()}  # positions in the split's own file
        x, y, carved = carve_missing(x, y, {"val": self.val_size, "test": self.test_size}, self.seed)
        classes = self._classes(arrays, y["train"])
        h = hashlib.sha256()
        if self.path.is_dir():
            for path in sorted(self.path.glob("*.npy")):
                h.update(path.name.encode())
                file_digest(h, path)
        else:
            file_digest(h, self.path)
        for part in (self.val_size, self.test_size, self.seed, self.layout, self.mean, self.std):
            h.update(repr(part).encode())
        if stream:
            shape = self._images(arrays, "train").shape[1:]
            plain = {s: Streamed(_Rows(*own["train" if s in carved else s]), x[s], shape,
                                 workers=self.streaming.workers) for s in x}
            stats = normalisation(self.mean, self.std, shape[0]) or channel_stats_streamed(plain["train"])
            t = {s: p.normalised_by(*stats) for s, p in plain.items()}
            log.info(f"data.stream: {self.path} memory-mapped ({len(x['train'])} training images; "
                     f"data.workers={self.streaming.workers})")
        else:
            train = scaled(x["train"])
            stats = normalisation(self.mean, self.std, train.shape[1]) or channel_stats(train)
            t = {s: normalised(train if s == "train" else scaled(x[s]), *stats) for s in x}
        source = described(str(self.path), carved, self.seed)
        return Splits(train_x=t["train"], train_y=torch.from_numpy(y["train"]), val_x=t["val"],
                      val_y=torch.from_numpy(y["val"]), test_x=t["test"], test_y=torch.from_numpy(y["test"]),
                      source=source, classes=classes, mean=stats[0], std=stats[1], fingerprint=h.hexdigest()[:16])

    def _token_splits(self, arrays: dict[str, np.ndarray]) -> Splits:
        if self.mean is not None:
            raise ValueError(f"data.mean: {self.path} holds token ids (train_x {arrays['train_x'].dtype} "
                             f"{arrays['train_x'].shape}), which are not normalised; set data.mean=null data.std=null")
        x, y = {}, {}
        for split in ("train", "val", "test"):
            if f"{split}_x" in arrays:
                a = arrays[f"{split}_x"]
                if not _tokens(a) or a.shape[1:] != arrays["train_x"].shape[1:]:
                    raise ValueError(f"data.path: {split}_x is {a.dtype} {a.shape}; train_x holds token ids "
                                     f"{arrays['train_x'].shape[1:]} per sample, so every split must")
                if len(a) and a.min() < 0:
                    raise ValueError(f"data.path: {split}_x holds token id {int(a.min())}; ids are 0, 1, ...")
                x[split], y[split] = np.asarray(a, dtype=np.int64), self._labels(arrays, split)
        x, y, carved = carve_missing(x, y, {"val": self.val_size, "test": self.test_size}, self.seed)
        h = hashlib.sha256()
        for path in [self.path] if self.path.is_file() else sorted(self.path.glob("*.npy")):
            file_digest(h, path)
        h.update(repr((self.val_size, self.test_size, self.seed, "tokens")).encode())
        t = {s: torch.from_numpy(x[s]) for s in x}
        return Splits(train_x=t["train"], train_y=torch.from_numpy(y["train"]), val_x=t["val"],
                      val_y=torch.from_numpy(y["val"]), test_x=t["test"], test_y=torch.from_numpy(y["test"]),
                      source=described(str(self.path), carved, self.seed), classes=self._classes(arrays, y["train"]),
                      fingerprint=h.hexdigest()[:16])

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
