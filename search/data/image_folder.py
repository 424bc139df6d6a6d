"""A folder of images, one sub-folder per class (``data=image_folder data.root=DIR``), as torchvision's ImageFolder.

Layout: ``DIR/train/<class>/<image>`` (class names: the sub-folders of ``train``, sorted; label i is the i-th),
and optionally ``DIR/val/<class>/...`` and ``DIR/test/<class>/...`` with classes among train's. Where ``val`` is
absent, ``val_size`` training images are carved with ``seed``; where ``test`` is absent, ``test_size`` more (the
same permutation: validation first, then test, the rest train).

An image is a file whose extension Pillow registers (``.png``, ``.jpg``, ``.bmp``, ``.gif``, ``.tif``, ``.webp``
...); other files are ignored. Grey modes (1, L, LA, I, I;16, F) read as one channel, every other mode (RGB, RGBA,
P, CMYK, ...) as three (alpha dropped); where a folder mixes them, every image takes the mode of the majority of
the training images (a tie: colour), and the log says how many were converted. Images are resized to
``image_size`` (bilinear) when it is set; otherwise every image must have one size. The normalisation is the
training split's per-channel mean and standard deviation (pixels in [0, 1]) unless ``mean`` and ``std`` are set.
A file Pillow cannot read is skipped and counted (``on_corrupt: skip``) or an error (``on_corrupt: error``).

Streaming (``stream``, ``workers``, ``memory_limit_mb``; see ``_stream.py``): every file is still read once, for
the fingerprint, its mode and size and whether it decodes, but no image is kept; a split is its file list,
decoded again when a batch is asked for, and the normalisation is computed in one more pass over the training
files. ``auto`` estimates the training split as the training files' count times the first image's decoded
size (resized where ``image_size`` is set), before anything is decoded.
"""
from __future__ import annotations

import hashlib
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ._base import (
    BaseDataModule, Splits, carve_missing, described, channel_stats, normalisation, size)
from ._pixels import normalised, scaled
from ._stream import Streamed, Streaming, channel_stats_streamed, float32_bytes

log = logging.getLogger("search")
GREY = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
ON_CORRUPT = ("skip", "error")
SPLITS = ("train", "val", "test")


@dataclass
class _Read:
    """The images of one split folder as decoded, before they share one mode."""

    arrays: list[np.ndarray] = field(default_factory=list)  # H x W (grey) or H x W x 3; empty when streaming
    grey: list[bool] = field(default_factory=list)  # per image: decoded as grey
    sizes: list[tuple[int, int]] = field(default_factory=list)  # per image: (height, width) as decoded
    labels: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def image_size_of(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    sides = [value] if isinstance(value, int) else value
    if (not isinstance(sides, (list, tuple)) or len(sides) not in (1, 2)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sides)):
        raise ValueError(f"data.image_size must be null (the images' own size), a side >= 1 or [height, width], "
                         f"got {value!r}")
    return (sides[0], sides[-1])


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


class ImageFolderData(BaseDataModule):
    """Images in class folders (see the module's docstring for the layout and the rules)."""

    key = "data.root"

    def __init__(self, *, root: str, name: str = "image-folder", val_size: int | float = 0.1,
                 test_size: int | float = 0.1, seed: int = 0, image_size: int | list[int] | None = None,
                 mean: list[float] | None = None, std: list[float] | None = None, on_corrupt: str = "skip",
                 num_classes: int | None = None, channels: int | None = None, stream: bool | str = "auto",
                 workers: int = 0, memory_limit_mb: float = 2048) -> None:
        super().__init__(name=name, val_size=val_size, seed=seed, num_classes=num_classes, channels=channels)
        self.streaming = Streaming(stream=stream, workers=workers, memory_limit_mb=memory_limit_mb)
        if not isinstance(root, str) or not root:
            raise ValueError(f"data.root must be a folder holding train/<class>/<image>, got {root!r}")
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"data.on_corrupt must be one of {list(ON_CORRUPT)}, got {on_corrupt!r}")
        if (mean is None) != (std is None):
            raise ValueError(f"data.mean and data.std go together: both null or both set, got {mean=} and {std=}")
        self.root, self.test_size = Path(root), size(test_size, key="data.test_size")
        self.image_size, self.on_corrupt = image_size_of(image_size), on_corrupt
        self.mean, self.std = mean, std
        self.extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}

    def classes(self) -> tuple[str, ...]:
        """The class names: the sub-folders of ``root/train``, sorted."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={self.root}: no such folder (expected "
                                    f"{self.root}/train/<class>/<image>)")
        train = self.root / "train"
        if not train.is_dir():
            raise FileNotFoundError(f"data.root={self.root}: no train/ folder in it (expected {train}/<class>/<image>; "
                                    "val/ and test/ are optional)")
        names = tuple(p.name for p in _visible(train) if p.is_dir())
        if not names:
            raise ValueError(f"data.root={self.root}: {train} holds no class folder (expected {train}/<class>/<image>)")
        return names

    def load(self) -> Splits:
        classes = self.classes()
        stream = self.streaming.stream is True or (self.streaming.stream == "auto" and self.streaming.wanted(
            self._train_bytes()))
        h = hashlib.sha256()
        read = {split: self._read(split, classes, h, keep=not stream) for split in SPLITS
                if (self.root / split).is_dir()}
        grey = grey_majority(read["train"].grey, key=self.key)
        if stream:
            x = {split: np.arange(len(r.files)) for split, r in read.items()}  # positions in the split's files
            for split, r in read.items():
                one_size(r.sizes, where=str(self.root / split))
        else:
            x = {split: stack(r.arrays, grey, where=str(self.root / split)) for split, r in read.items()}
        y = {split: np.asarray(r.labels, dtype=np.int64) for split, r in read.items()}
        x, y, carved = carve_missing(x, y, {"val": self.val_size, "test": self.test_size}, self.seed)
        settings = (f"val_size={self.val_size}", f"test_size={self.test_size}", f"seed={self.seed}",
                    f"image_size={self.image_size}", f"mean={self.mean}", f"std={self.std}", f"grey={grey}")
        for part in settings:
            h.update(part.encode())
        if stream:
            t, stats = self._streamed(read, x, carved, grey)
        else:
            train = scaled(x["train"])
            stats = normalisation(self.mean, self.std, train.shape[1]) or channel_stats(train)
            t = {split: normalised(train if split == "train" else scaled(x[split]), *stats) for split in SPLITS}
        label = {split: torch.from_numpy(y[split]) for split in SPLITS}
        source = described(str(self.root), carved, self.seed)
        return Splits(train_x=t["train"], train_y=label["train"], val_x=t["val"], val_y=label["val"],
                      test_x=t["test"], test_y=label["test"], source=source, classes=classes, mean=stats[0],
                      std=stats[1], fingerprint=h.hexdigest()[:16])

    def _streamed(self, read: dict[str, _Read], x: dict[str, np.ndarray], carved: list[str],
                  grey: bool) -> tuple[dict[str, Streamed], tuple[tuple[float, ...], tuple[float, ...]]]:
        """Each split as its files read on demand (a carved split: positions in train's), and the normalisation."""
        height, width = read["train"].sizes[0]
        shape = (1 if grey else 3, height, width)
        workers = self.streaming.workers
        files = {split: _Files(tuple(r.files), grey, self.image_size) for split, r in read.items()}
        plain = {split: Streamed(files["train" if split in carved else split], x[split], shape, workers=workers)
                 for split in SPLITS}
        stats = normalisation(self.mean, self.std, shape[0]) or channel_stats_streamed(plain["train"])
        log.info(f"data.stream: {self.root} read on demand ({len(x['train'])} training images, "
                 f"{float32_bytes(len(x['train']), shape) / 2**20:.0f} MB as float32; data.workers={workers})")
        return {split: p.normalised_by(*stats) for split, p in plain.items()}, stats

    def _train_bytes(self) -> int:
        """The training split's float32 size, estimated before decoding: files by extension times the first
        readable image's size (as resized) and channels (1 grey, 3 otherwise)."""
        train = self.root / "train"
        if not train.is_dir():
            return 0
        files = [p for p in train.rglob("*") if p.is_file() and p.suffix.lower() in self.extensions]
        for path in files[:16]:
            try:
                with Image.open(path) as im:
                    mode, (width, height) = im.mode, im.size
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                continue
            height, width = self.image_size or (height, width)
            return float32_bytes(len(files), (1 if mode in GREY else 3, height, width))
        return 0

    def _read(self, split: str, classes: tuple[str, ...], h: Any, *, keep: bool = True) -> _Read:
        """Every image of ``root/<split>``, decoded to L or RGB (resized where set) and kept unless ``keep`` is
        false (streaming: its mode and size only); their bytes go into ``h``."""
        folder, out = self.root / split, _Read()
        for sub in (p for p in _visible(folder) if p.is_dir()):
            if sub.name not in classes:
                raise ValueError(f"data.root: {sub} is not a class of {self.root / 'train'} (its classes: "
                                 f"{', '.join(classes)})")
            label, before = classes.index(sub.name), len(out.files)
            files = sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in self.extensions
                           and not p.name.startswith("."))
            for path in files:
                data = path.read_bytes()
                name = str(path.relative_to(self.root)).encode()
                h.update(len(name).to_bytes(8, "little") + name + len(data).to_bytes(8, "little") + data)
                image = self._decode(path, data)
                if image is None:
                    out.skipped.append(str(path))
                    continue
                if keep:
                    out.arrays.append(image)
                out.grey.append(image.ndim == 2)
                out.sizes.append(image.shape[:2])
                out.labels.append(label)
                out.files.append(str(path))
            if len(out.files) == before:
                raise ValueError(f"data.root: {sub} holds no readable image ({len(files)} image file(s) by extension, "
                                 "none readable)")
        if out.skipped:
            log.warning(f"data.root: skipped {len(out.skipped)} unreadable image(s) in {folder} "
                        f"(data.on_corrupt=skip), e.g. {out.skipped[0]}")
        if not out.files:
            raise ValueError(f"data.root: {folder} holds no class folder with images")
        return out

    def _decode(self, path: Path, data: bytes) -> np.ndarray | None:
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return pil_array(im, self.image_size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            if self.on_corrupt == "error":
                raise ValueError(f"data.on_corrupt=error: {path} is not a readable image ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}); set data.on_corrupt=skip to "
                                 "skip such files") from exc
            return None



def pil_array(im: Image.Image, image_size: tuple[int, int] | None) -> np.ndarray:
    """A Pillow image as an L (H x W) or RGB (H x W x 3) uint8 array, resized (bilinear) to (height, width)."""
    image = im.convert("L" if im.mode in GREY else "RGB")
    if image_size is not None and image.size != image_size[::-1]:
        image = image.resize(image_size[::-1], Image.BILINEAR)
    return np.asarray(image)


@dataclass(frozen=True)
class _Files:
    """Image files decoded on demand (a streamed split's ``read``): positions -> N x C x H x W uint8, each image
    as ``load`` decodes it (``pil_array``, then the split's mode)."""

    files: tuple[str, ...]
    grey: bool
    image_size: tuple[int, int] | None

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        arrays = []
        for i in np.atleast_1d(positions):
            with Image.open(self.files[i]) as im:
                im.load()
                arrays.append(pil_array(im, self.image_size))
        return stack(arrays, self.grey, where="data.root (streamed)")


def majority_grey(arrays: list[np.ndarray], *, key: str) -> bool:
    """Whether the training images are mostly grey (then every image is read as grey); says a mixed set."""
    return grey_majority([a.ndim == 2 for a in arrays], key=key)


def grey_majority(flags: list[bool], *, key: str) -> bool:
    """``majority_grey`` of the images' grey flags."""
    grey = sum(flags)
    colour = len(flags) - grey
    is_grey = grey > colour
    if grey and colour:
        log.info(f"{key}: {grey} grey and {colour} colour training images; all read as "
                 f"{'grey (1 channel)' if is_grey else 'colour (3 channels)'}, the majority's mode")
    return is_grey


def stack(arrays: list[np.ndarray], grey: bool, *, where: str) -> np.ndarray:
    """One N x C x H x W uint8 array of a split's images in the chosen mode; one size or a ValueError."""
    one_size([a.shape[:2] for a in arrays], where=where)
    converted = [_mode(a, grey) for a in arrays]
    return np.stack(converted)[:, None] if grey else np.stack(converted).transpose(0, 3, 1, 2)


def one_size(shapes: list[tuple[int, int]], *, where: str) -> None:
    """Every image of a split has one (height, width), else a ValueError saying which sizes there are."""
    sizes = Counter(shapes)
    if len(sizes) > 1:
        found = ", ".join(f"{h}x{w}: {n}" for (h, w), n in sizes.most_common(4))
        raise ValueError(f"data.image_size: the images of {where} have {len(sizes)} sizes ({found}); "
                         "set data.image_size=N (or [height,width]) to resize them")


def _mode(a: np.ndarray, grey: bool) -> np.ndarray:
    """An L (H x W) or RGB (H x W x 3) array in the mode chosen: Pillow's own conversion (ITU-R 601-2 luma)."""
    if grey:
        return a if a.ndim == 2 else np.asarray(Image.fromarray(a, "RGB").convert("L"))
    return a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2)
