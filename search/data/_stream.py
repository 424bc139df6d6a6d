"""Data larger than memory: a split whose images are read on demand (``Streamed``) in place of its tensor.

In-memory tensors stay the default and the fast path. With ``data.stream=true``, or ``auto`` when the training
split decoded as float32 would pass ``data.memory_limit_mb``, a data module that can stream (``image_folder``:
the image files; ``arrays``: a folder of ``.npy`` files, memory-mapped) gives ``Splits`` whose ``*_x`` are
``Streamed``: ``len()``, ``.shape`` and indexing by an int, a slice or an index tensor behave as on the tensor,
and return the normalised float32 images of just those positions, read then. So every consumer that slices
(calibration, accuracy) or indexes a batch (training, recovery, distillation) works unchanged; the passes over
many batches go through ``feed``, which reads them in a ``DataLoader`` with ``data.workers`` worker processes.
Labels stay tensors: they are small.

The teacher's logits are cached per sample index, as in memory: one streamed pass over the training split, then
an N x classes tensor on disk (60,000 x 10 floats is 2.4 MB) that every trial indexes with its batch. Computing
them on the fly instead would add the teacher's forward pass to every batch of every trial, to save memory that the
images, not the logits, take.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._pixels import normalised, scaled

STREAM = ("auto", True, False)
CHUNK = 1000  # images per read in the passes over a whole split (statistics), as Accuracy's batch


@dataclass(frozen=True)
class Streaming:
    """``data.stream`` (auto, true, false), ``data.workers`` (DataLoader worker processes, 0 = read in the main
    process) and ``data.memory_limit_mb`` (auto streams past it), checked once."""

    stream: Any = "auto"
    workers: int = 0
    memory_limit_mb: float = 2048

    def __post_init__(self) -> None:
        if not any(self.stream is s or self.stream == s and isinstance(s, str) for s in STREAM):
            raise ValueError(f"data.stream must be auto (stream past data.memory_limit_mb), true or false, "
                             f"got {self.stream!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"data.workers must be an integer >= 0 (DataLoader worker processes; 0 = read in the "
                             f"main process), got {self.workers!r}")
        limit = self.memory_limit_mb
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
            raise ValueError(f"data.memory_limit_mb must be a number > 0 (megabytes of decoded training images "
                             f"above which data.stream=auto streams), got {limit!r}")

    def wanted(self, nbytes: int) -> bool:
        """Whether to stream a training split of ``nbytes`` bytes as float32."""
        return self.stream is True or (self.stream == "auto" and nbytes > self.memory_limit_mb * 2**20)


class Streamed:
    """N images read on demand: ``read(positions)`` returns the raw N x C x H x W array (uint8 or float) of those
    positions of a source, ``index`` maps this split's images to positions; items are scaled (uint8 / 255) and
    normalised per channel (``mean`` / ``std``; None: scaled only) exactly as the in-memory tensors are."""

    def __init__(self, read: Callable[[np.ndarray], np.ndarray], index: np.ndarray, image_shape: Sequence[int], *,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, workers: int = 0) -> None:
        self.read, self.index, self.image_shape = read, np.asarray(index, dtype=np.int64), tuple(image_shape)
        self.mean, self.std, self.workers = mean, std, workers

    def normalised_by(self, mean: Sequence[float], std: Sequence[float]) -> Streamed:
        return Streamed(self.read, self.index, self.image_shape, mean=mean, std=std, workers=self.workers)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.image_shape))

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, torch.Tensor):
            key = key.numpy()
        if isinstance(key, (int, np.integer)):
            return self[np.asarray([key])][0]
        positions = self.index[key]
        raw = self.read(positions) if len(positions) else np.zeros((0, *self.image_shape), np.float32)
        x = scaled(raw)
        return normalised(x, self.mean, self.std) if self.mean is not None else torch.from_numpy(x)

    def feed(self, keys: Iterable[Any]) -> Iterator[torch.Tensor]:
        """``self[key]`` for each key in order, read by a ``DataLoader`` with ``workers`` processes. Its own
        generator: the worker seeds are not drawn from torch's global one, so training draws what it would in
        memory."""
        from torch.utils.data import DataLoader

        if not self.workers:
            return (self[key] for key in keys)
        return iter(DataLoader(self, batch_size=None, sampler=list(keys), num_workers=self.workers,
                               generator=torch.Generator()))

    def __repr__(self) -> str:
        return f"Streamed({tuple(self.shape)}, workers={self.workers})"


def feed(x: torch.Tensor | Streamed, keys: Iterable[Any]) -> Iterator[torch.Tensor]:
    """``x[key]`` for each key: a tensor indexed here, a ``Streamed`` split read through its ``DataLoader``."""
    return x.feed(keys) if isinstance(x, Streamed) else (x[key] for key in keys)


def channel_stats_streamed(x: Streamed) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``channel_stats`` of a split read in one pass of ``CHUNK`` images: each chunk's per-channel mean and sum of
    squared deviations (float64), merged as Chan, Golub and LeVeque (1979) do, so no sum of squares cancels;
    rounded to 4 places as in memory."""
    count, mean, m2 = 0, np.zeros(x.image_shape[0]), np.zeros(x.image_shape[0])
    for chunk in feed(x, [slice(s, s + CHUNK) for s in range(0, len(x), CHUNK)]):
        a = chunk.numpy()
        k = a.size // a.shape[1]
        mean_k = a.mean(axis=(0, 2, 3), dtype=np.float64)
        m2_k = np.square(a - mean_k.reshape(1, -1, 1, 1)).sum(axis=(0, 2, 3), dtype=np.float64)
        delta, total = mean_k - mean, count + k
        mean, m2, count = mean + delta * k / total, m2 + m2_k + delta**2 * count * k / total, total
    std = np.sqrt(m2 / count)
    std[std == 0] = 1.0  # a constant channel: leave its scale alone
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def float32_bytes(n: int, image_shape: Sequence[int]) -> int:
    """What ``n`` images of ``image_shape`` (C, H, W) take as float32."""
    return 4 * n * int(np.prod(image_shape))
