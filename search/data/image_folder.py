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
    BaseDataModule, Splits, carve_missing, described, channel_stats, normalisation, normalised, scaled, size)

log = logging.getLogger("search")
GREY = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
ON_CORRUPT = ("skip", "error")
SPLITS = ("train", "val", "test")


@dataclass
class _Read:
    """The images of one split folder as decoded, before they share one mode."""

    arrays: list[np.ndarray] = field(default_factory=list)  # H x W (grey) or H x W x 3
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
                 num_classes: int | None = None, channels: int | None = None) -> None:
        super().__init__(name=name, val_size=val_size, seed=seed, num_classes=num_classes, channels=channels)
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
        h = hashlib.sha256()
        read = {split: self._read(split, classes, h) for split in SPLITS if (self.root / split).is_dir()}
        grey = majority_grey(read["train"].arrays, key=self.key)
        x = {split: stack(r.arrays, grey, where=str(self.root / split)) for split, r in read.items()}
        y = {split: np.asarray(r.labels, dtype=np.int64) for split, r in read.items()}
        x, y, carved = carve_missing(x, y, {"val": self.val_size, "test": self.test_size}, self.seed)
        train = scaled(x["train"])
        stats = normalisation(self.mean, self.std, train.shape[1]) or channel_stats(train)
        settings = (f"val_size={self.val_size}", f"test_size={self.test_size}", f"seed={self.seed}",
                    f"image_size={self.image_size}", f"mean={self.mean}", f"std={self.std}", f"grey={grey}")
        for part in settings:
            h.update(part.encode())
        t = {split: normalised(train if split == "train" else scaled(x[split]), *stats) for split in SPLITS}
        label = {split: torch.from_numpy(y[split]) for split in SPLITS}
        source = described(str(self.root), carved, self.seed)
        return Splits(train_x=t["train"], train_y=label["train"], val_x=t["val"], val_y=label["val"],
                      test_x=t["test"], test_y=label["test"], source=source, classes=classes, mean=stats[0],
                      std=stats[1], fingerprint=h.hexdigest()[:16])

    def _read(self, split: str, classes: tuple[str, ...], h: Any) -> _Read:
        """Every image of ``root/<split>``, decoded to L or RGB (resized where set); their bytes go into ``h``."""
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
                out.arrays.append(image)
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


def majority_grey(arrays: list[np.ndarray], *, key: str) -> bool:
    """Whether the training images are mostly grey (then every image is read as grey); says a mixed set."""
    grey = sum(a.ndim == 2 for a in arrays)
    colour = len(arrays) - grey
    is_grey = grey > colour
    if grey and colour:
        log.info(f"{key}: {grey} grey and {colour} colour training images; all read as "
                 f"{'grey (1 channel)' if is_grey else 'colour (3 channels)'}, the majority's mode")
    return is_grey


def stack(arrays: list[np.ndarray], grey: bool, *, where: str) -> np.ndarray:
    """One N x C x H x W uint8 array of a split's images in the chosen mode; one size or a ValueError."""
    sizes = Counter(a.shape[:2] for a in arrays)
    if len(sizes) > 1:
        found = ", ".join(f"{h}x{w}: {n}" for (h, w), n in sizes.most_common(4))
        raise ValueError(f"data.image_size: the images of {where} have {len(sizes)} sizes ({found}); "
                         "set data.image_size=N (or [height,width]) to resize them")
    converted = [_mode(a, grey) for a in arrays]
    return np.stack(converted)[:, None] if grey else np.stack(converted).transpose(0, 3, 1, 2)


def _mode(a: np.ndarray, grey: bool) -> np.ndarray:
    """An L (H x W) or RGB (H x W x 3) array in the mode chosen: Pillow's own conversion (ITU-R 601-2 luma)."""
    if grey:
        return a if a.ndim == 2 else np.asarray(Image.fromarray(a, "RGB").convert("L"))
    return a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2)
