"""Pixels as the engine feeds them: scaled to [0, 1] and normalised per channel. Below both the in-memory splits
(``_base``) and the streamed ones (``_stream``), which compute them alike."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def scaled(images: np.ndarray) -> np.ndarray:
    """N x C x H x W images as float32: uint8 divided by 255 (pixels in [0, 1]), floats as they are."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def normalised(x: np.ndarray, mean: Iterable[float], std: Iterable[float]) -> torch.Tensor:
    """(x - mean) / std per channel, as a float32 tensor."""
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    return (torch.from_numpy(np.ascontiguousarray(x)) - m) / s
