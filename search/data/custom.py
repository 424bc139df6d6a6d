"""Your own loader: ``data=custom data._target_=your.module.function`` (a plain function, not a class).

The function is called with the keys you add to the section (``+data.subset=train`` calls ``function(subset=
"train")``; the section's own keys below are not passed) and returns either

- a ``Splits`` (everything set by you: used as it is, checked as any module's), or
- a mapping with ``"train"`` and optionally ``"val"``, ``"test"`` and ``"classes"`` (the class names), where each
  split is a pair ``(images, labels)`` of numpy arrays or torch tensors, or a ``torch.utils.data.Dataset`` (any
  object with ``len()`` and ``[i]``) whose items are ``(image, class index)``.

Images in a pair are uint8 (pixels 0-255, divided by 255) or float (taken as they are), shaped N x H x W,
N x H x W x C or N x C x H x W (the layout told by the small axis, as ``data=arrays`` does; ``data.layout`` when
both or neither axis is small). A data set's images are Pillow images (read as an image folder's: grey or colour
by mode, the majority's mode, resized to ``data.image_size`` when set) or arrays / tensors shaped H x W or
C x H x W (torchvision's ``ToTensor`` layout). A split left out is carved from train with ``data.seed``
(validation first, then test); normalisation is the training split's unless ``data.mean`` / ``data.std`` are set.
The fingerprint hashes the decoded images and labels with the settings and the keywords, so the caches follow
what the function returned, not its name.

```python
def load(root: str, fraction: float = 1.0) -> dict:   # python -m search data=custom
    ...                                                #   data._target_=mydata.load +data.root=/data/x
    return {"train": (train_images, train_labels), "test": test_set, "classes": ["cat", "dog"]}
```
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from ._base import (
    BaseDataModule, Splits, carve_missing, channel_stats, described, normalisation, size)
from ._pixels import normalised, scaled
from .arrays import LAYOUTS, layout_of, to_nchw
from .image_folder import image_size_of, majority_grey, pil_array, stack

SPLITS = ("train", "val", "test")
RETURNS = ("a search.data.Splits, or a mapping with 'train' and optionally 'val', 'test', 'classes', each split "
           "an (images, labels) pair or a Dataset of (image, class index) items")


class CustomData(BaseDataModule):
    """The splits your function returns (see the module's docstring for what it may return)."""

    key = "data._target_"

    def __init__(self, *, function: Callable[..., Any] | str, name: str = "custom", val_size: int | float = 0.1,
                 test_size: int | float = 0.1, seed: int = 0, layout: str | None = None,
                 image_size: int | list[int] | None = None, mean: list[float] | None = None,
                 std: list[float] | None = None, num_classes: int | None = None, channels: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name=name, val_size=val_size, seed=seed, num_classes=num_classes, channels=channels)
        if isinstance(function, str):
            from . import located

            function = located(function, key="data._target_")
        if not callable(function) or isinstance(function, type):
            raise ValueError(f"data._target_: {function!r} is not a function; give your.module.function "
                             "(or a search.data.BaseDataModule class)")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"data.layout must be null (told from the shape) or one of {list(LAYOUTS)}, "
                             f"got {layout!r}")
        if (mean is None) != (std is None):
            raise ValueError(f"data.mean and data.std go together: both null or both set, got {mean=} and {std=}")
        self.function, self.kwargs, self.layout = function, kwargs, layout
        self.test_size, self.image_size = size(test_size, key="data.test_size"), image_size_of(image_size)
        self.mean, self.std = mean, std
        self.target = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', function)}"

    def called(self) -> Any:
        """What the function returns for the keywords; its own exception is one line naming the key."""
        try:
            return self.function(**self.kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's code: its first line, with where it came from
            why = (str(exc).strip().splitlines() or [""])[0][:200]
            args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
            raise ValueError(f"data._target_={self.target}: {self.target}({args}) failed "
                             f"({type(exc).__name__}: {why})") from exc

    def load(self) -> Splits:
        out = self.called()
        if isinstance(out, Splits):
            return out
        if not isinstance(out, Mapping) or "train" not in out:
            found = sorted(map(str, out)) if isinstance(out, Mapping) else type(out).__name__
            raise ValueError(f"data._target_={self.target}: returned {found}; it must return {RETURNS}")
        unknown = sorted(set(map(str, out)) - {*SPLITS, "classes"})
        if unknown:
            raise ValueError(f"data._target_={self.target}: returned unexpected keys {unknown}; allowed: "
                             f"{[*SPLITS, 'classes']}")
        parts = {s: self._split(out[s], s) for s in SPLITS if out.get(s) is not None}
        x, y = self._images(parts), {s: labels for s, (_, labels) in parts.items()}
        x, y, carved = carve_missing(x, y, {"val": self.val_size, "test": self.test_size}, self.seed)
        train = scaled(x["train"])
        stats = normalisation(self.mean, self.std, train.shape[1]) or channel_stats(train)
        h = hashlib.sha256()
        for part in (*(a.tobytes() for s in SPLITS for a in (x[s], y[s])),
                     repr((self.target, sorted(self.kwargs.items()), self.val_size, self.test_size, self.seed,
                           self.layout, self.image_size, self.mean, self.std)).encode()):
            h.update(part)
        t = {s: normalised(train if s == "train" else scaled(x[s]), *stats) for s in x}
        classes = out.get("classes")
        return Splits(train_x=t["train"], train_y=torch.from_numpy(y["train"]), val_x=t["val"],
                      val_y=torch.from_numpy(y["val"]), test_x=t["test"], test_y=torch.from_numpy(y["test"]),
                      source=described(f"{self.target}()", carved, self.seed),
                      classes=tuple(map(str, classes)) if classes is not None else (), mean=stats[0], std=stats[1],
                      fingerprint=h.hexdigest()[:16])

    def _split(self, value: Any, split: str) -> tuple[Any, np.ndarray]:
        """A split's raw images (an array, or a list of per-item arrays / Pillow images) and its int64 labels."""
        where = f"data._target_={self.target}: {split!r}"
        if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], (np.ndarray, torch.Tensor)):
            images, labels = (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in value)
            if not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)):
                raise ValueError(f"{where} images have dtype {images.dtype}; allowed uint8 (0-255) or float")
            images = to_nchw(images, layout_of(images.shape, self.layout, f"{split} images"))
        elif hasattr(value, "__len__") and hasattr(value, "__getitem__"):
            items = [value[i] for i in range(len(value))]
            if not all(isinstance(it, (tuple, list)) and len(it) >= 2 for it in items):
                raise ValueError(f"{where} is a data set whose items are not (image, class index) pairs")
            images, labels = [it[0] for it in items], np.asarray([_index(it[1], where) for it in items])
        else:
            raise ValueError(f"{where} is a {type(value).__name__}; each split must be an (images, labels) pair or "
                             "a Dataset of (image, class index) items")
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) != len(images):
            raise ValueError(f"{where} labels are {labels.dtype} {labels.shape}; need integers, one per image "
                             f"({len(images)})")
        if len(labels) and labels.min() < 0:
            raise ValueError(f"{where} holds label {int(labels.min())}; labels are 0, 1, ... (class indices)")
        return images, labels.astype(np.int64)

    def _images(self, parts: dict[str, tuple[Any, np.ndarray]]) -> dict[str, np.ndarray]:
        """Each split's images as one N x C x H x W array (data sets' items decoded and stacked here)."""
        pil = {s: images for s, (images, _) in parts.items()
               if isinstance(images, list) and images and isinstance(images[0], Image.Image)}
        out = {s: images for s, (images, _) in parts.items() if isinstance(images, np.ndarray)}
        if pil:
            arrays = {s: [pil_array(im, self.image_size) for im in images] for s, images in pil.items()}
            grey = majority_grey(arrays.get("train") or next(iter(arrays.values())), key=self.key)
            out |= {s: stack(a, grey, where=f"{self.target}() ({s})") for s, a in arrays.items()}
        for s, (images, _) in parts.items():
            if s not in out:  # a data set of arrays / tensors, H x W or C x H x W each
                a = [im.numpy() if isinstance(im, torch.Tensor) else np.asarray(im) for im in images]
                shapes = {x.shape for x in a}
                if len(shapes) != 1 or len(next(iter(shapes))) not in (2, 3):
                    raise ValueError(f"data._target_={self.target}: {s!r} items' images are shaped "
                                     f"{sorted(shapes)[:3]}; need one shape, H x W or C x H x W (or Pillow images)")
                out[s] = np.stack(a) if a[0].ndim == 3 else np.stack(a)[:, None]
        return out


def _index(label: Any, where: str) -> int:
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.item()
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise ValueError(f"{where} is a data set whose labels are {type(label).__name__}; need class indices (int)")
    return int(label)
