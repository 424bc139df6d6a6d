"""The extension point for data: a data module (``BaseDataModule``) reads a data set once and yields ``Splits``.

A data module is one class and one ``conf/data/<option>.yaml`` whose ``_target_`` names it; every config key is
a keyword of its constructor, which rejects a bad value at once naming ``data.<key>``, the value and what is
allowed. ``Splits`` carries what the rest of the engine needs: the three splits as normalised N x C x H x W
float tensors (or, for data larger than memory, ``Streamed`` images read on demand: ``_stream.py``), the class
names, the per-channel normalisation and a fingerprint of the contents (cache keys).
"""
from __future__ import annotations

import abc
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from ._stream import Streamed


@dataclass(frozen=True)
class Splits:
    """The training split, the fixed seeded validation split (what trials are scored on) and the test split
    (reports only), as normalised N x C x H x W tensors (or ``Streamed``, indexed alike) with their labels, and
    where they came from.

    ``classes``: the class names, label i is ``classes[i]`` (empty: ``"0"``, ``"1"``, ... up to the largest
    label). ``mean`` / ``std``: the per-channel normalisation applied to pixels scaled to [0, 1] (empty: none,
    the tensors are as given). ``fingerprint``: a short hash of the data's contents and the settings that shape
    the tensors (empty: a hash of the tensors themselves).
    """

    train_x: torch.Tensor | Streamed
    train_y: torch.Tensor
    val_x: torch.Tensor | Streamed
    val_y: torch.Tensor
    test_x: torch.Tensor | Streamed
    test_y: torch.Tensor
    source: str
    classes: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    fingerprint: str = ""

    def __post_init__(self) -> None:
        # frozen: the defaults derived from the tensors are set once, here
        if not self.classes:
            top = max((int(y.max()) for y in (self.train_y, self.val_y, self.test_y) if len(y)), default=-1)
            object.__setattr__(self, "classes", tuple(str(i) for i in range(top + 1)))
        if not self.mean and self.input_dtype == "float32":
            object.__setattr__(self, "mean", (0.0,) * self.channels)
            object.__setattr__(self, "std", (1.0,) * self.channels)
        if not self.fingerprint:
            tensors = (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y)
            object.__setattr__(self, "fingerprint", digest(*(t.contiguous().numpy().tobytes() for t in tensors)))

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape with the batch dimension first: (1, C, H, W)."""
        return (1, *self.train_x.shape[1:])

    @property
    def input_dtype(self) -> str:
        """``float32`` (images), or ``int64`` for token ids (N x L integer sequences, ``data=arrays``)."""
        dtype = getattr(self.train_x, "dtype", None)  # a streamed split: images, float32
        return "int64" if isinstance(dtype, torch.dtype) and not dtype.is_floating_point else "float32"

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def digest(*parts: bytes | str) -> str:
    """A short hash of ``parts`` in order (16 hex digits, as the engine's other cache keys)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))  # length-prefixed: ("ab", "c") and ("a", "bc") differ
        h.update(data)
    return h.hexdigest()[:16]


class BaseDataModule(abc.ABC):
    """A data set: ``load()`` reads it and returns its ``Splits``; ``splits()`` adds the checks every module shares.

    ``val_size`` (and a subclass's ``test_size``): an image count >= 1, or a fraction in (0, 1) of the training
    images, carved with ``seed`` where the data has no split of its own. ``num_classes`` / ``channels``: null
    (from the data) or the count the data must have, checked once it is read.
    """

    key = "data"  # the config key that names where the data is read from, in error messages

    def __init__(self, *, name: str, val_size: int | float, seed: int = 0, num_classes: int | None = None,
                 channels: int | None = None) -> None:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"data.name must be a plain non-empty name (it names the study), got {name!r}")
        size(val_size, key="data.val_size")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"data.seed must be an integer, got {seed!r}")
        for key, value in (("num_classes", num_classes), ("channels", channels)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"data.{key} must be null (from the data) or an integer >= 1, got {value!r}")
        self.name, self.val_size, self.seed = name, val_size, seed
        self.num_classes, self.channels = num_classes, channels

    @abc.abstractmethod
    def load(self) -> Splits:
        """Read the data: the three splits, their class names, normalisation and fingerprint."""

    def splits(self) -> Splits:
        """``load()``, then the checks every data set must pass (labels in range, one image shape, counts)."""
        s = self.load()
        check(s, key=self.key)
        stated = (("num_classes", self.num_classes, s.num_classes), ("channels", self.channels, s.channels))
        for key, want, got in stated:
            if want is not None and want != got:
                raise ValueError(f"data.{key}={want}, but {s.source} has {got}; set data.{key}=null to take it from "
                                 "the data")
        return s


def check(s: Splits, *, key: str = "data") -> None:
    """Labels in [0, num_classes), one image shape in every split, every split non-empty: else a ValueError."""
    shape = tuple(s.train_x.shape[1:])
    for split in ("train", "val", "test"):
        x, y = getattr(s, f"{split}_x"), getattr(s, f"{split}_y")
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(f"{key}: {s.source}: the {split} split holds {len(x)} images and {len(y)} labels; "
                             "need as many labels as images, at least one")
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"{key}: {s.source}: {split} images are {tuple(x.shape[1:])} (C, H, W), the training "
                             f"images {shape}; every split needs one shape")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= s.num_classes:
            raise ValueError(f"{key}: {s.source}: {split} labels span {low}..{high}; allowed 0..{s.num_classes - 1} "
                             f"({s.num_classes} classes)")


def size(value: Any, *, key: str) -> int | float:
    """A split size as configured: an integer >= 1 or a fraction in (0, 1); else a ValueError naming ``key``."""
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or (
        isinstance(value, float) and 0 < value < 1)
    if not ok:
        raise ValueError(f"{key} must be an image count >= 1 or a fraction in (0, 1), got {value!r}")
    return value


def count(value: int | float, n: int) -> int:
    """How many of ``n`` images the size ``value`` (count or fraction) stands for: at least one."""
    return value if isinstance(value, int) else max(1, round(value * n))


def carve(n: int, sizes: Sequence[tuple[str, int]], seed: int) -> list[np.ndarray]:
    """Seeded disjoint index sets of ``n`` images: one per (key, size) in order, then the rest (sorted) for training.

    One permutation of ``range(n)`` by ``numpy.random.default_rng(seed)``: the first set is its first indices,
    the next set the following ones; so the validation split is the same whether or not a test split is carved.
    """
    taken = sum(k for _, k in sizes)
    if taken >= n:
        asked = ", ".join(f"{key}={k}" for key, k in sizes)
        raise ValueError(f"{asked}: {taken} images carved from {n} training images leave none to train on; "
                         "set a smaller size (a count, or a fraction such as 0.1)")
    order, out, start = np.random.default_rng(seed).permutation(n), [], 0
    for _, k in sizes:
        out.append(order[start:start + k])
        start += k
    return [*out, np.sort(order[start:])]


def carve_missing(x: dict[str, np.ndarray], y: dict[str, np.ndarray], sizes: dict[str, int | float],
                  seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """The splits of ``sizes`` (``val``, ``test``) that ``x`` lacks, carved from ``x["train"]`` (``carve``); also
    which were carved."""
    n = len(y["train"])
    wanted = [(split, count(value, n)) for split, value in sizes.items() if split not in x]
    if not wanted:
        return x, y, []
    *parts, rest = carve(n, [(f"data.{split}_size", k) for split, k in wanted], seed)
    x, y = dict(x), dict(y)
    for (split, _), idx in zip(wanted, parts):
        x[split], y[split] = x["train"][idx], y["train"][idx]
    x["train"], y["train"] = x["train"][rest], y["train"][rest]
    return x, y, [split for split, _ in wanted]


def described(where: str, carved: list[str], seed: int) -> str:
    """A ``Splits.source``: where the data is, and which splits were carved from train."""
    return where + (f" ({' and '.join(carved)} carved from train with seed {seed})" if carved else "")


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of N x C x H x W images (float64 sums, rounded to 4 places)."""
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x.std(axis=(0, 2, 3), dtype=np.float64)
    std[std == 0] = 1.0  # a constant channel: leave its scale alone
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def normalisation(mean: Any, std: Any, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``data.mean`` / ``data.std`` as configured (both null, or both lists of ``channels`` numbers, std > 0)."""
    if mean is None and std is None:
        return None
    for key, value in (("mean", mean), ("std", std)):
        if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != channels or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ValueError(f"data.{key} must be null (computed from the training split) or a list of {channels} "
                             f"number(s), one per channel, got {value!r}")
    if any(s <= 0 for s in std):
        raise ValueError(f"data.std must be > 0 in every channel, got {list(std)!r}")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
