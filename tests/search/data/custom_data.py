"""Loaders for ``data=custom`` in tests/search/data/test_data_custom.py: each is named by ``data._target_`` as a user's
own function would be (``tests.search.data.custom_data.<name>``) and reads Fashion-MNIST's test files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path("/usr/share/datasets/fashion-mnist")


def images(n: int = 60, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test images (uint8, N x 28 x 28) of the first ``classes`` classes, and their labels."""
    from search.data import read_idx

    x, y = read_idx(ROOT / "t10k-images-idx3-ubyte.gz"), read_idx(ROOT / "t10k-labels-idx1-ubyte.gz")
    keep = np.flatnonzero(y < classes)[:n]
    return x[keep], y[keep].astype(np.int64)


def pairs(n: int = 60, with_test: bool = False) -> dict:
    """(images, labels) arrays, named classes; the last 12 as the test split when ``with_test``."""
    x, y = images(n)
    out = {"train": (x[:-12], y[:-12]) if with_test else (x, y), "classes": ["top", "trouser", "pullover"]}
    if with_test:
        out["test"] = (torch.from_numpy(x[-12:]), torch.from_numpy(y[-12:]))  # tensors as well as arrays
    return out


class Items(torch.utils.data.Dataset):
    """A map-style data set of (image, class index) items: Pillow images, or C x H x W float tensors in [0, 1]
    (torchvision's ToTensor)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, kind: str) -> None:
        self.x, self.y, self.kind = x, y, kind

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.x[i]) if self.kind == "pil" else torch.from_numpy(self.x[i] / 255.0)[None]
        return image, int(self.y[i])


def dataset(n: int = 60, kind: str = "pil") -> dict:
    x, y = images(n)
    return {"train": Items(x, y, kind)}


def splits():
    """A ``Splits`` made by hand: used as it is."""
    from search.data import Splits

    x, y = images(30)
    t = torch.from_numpy(x[:, None] / 255.0).float()
    yt = torch.from_numpy(y)
    return Splits(train_x=t[:20], train_y=yt[:20], val_x=t[20:25], val_y=yt[20:25], test_x=t[25:], test_y=yt[25:],
                  source="by hand")


def bad(case: str):
    """What a loader should not return or do, by ``case``."""
    x, y = images(20)
    return {
        "list": lambda: [x, y],
        "no_train": lambda: {"val": (x, y)},
        "unknown": lambda: {"train": (x, y), "extra": 1},
        "float_labels": lambda: {"train": (x, y.astype(np.float32))},
        "negative": lambda: {"train": (x, y - 1)},
        "mixed": lambda: {"train": [(torch.zeros(1, 28, 28), 0), (torch.zeros(1, 20, 20), 1)]},
        "raises": lambda: (_ for _ in ()).throw(OSError("disk gone\nsecond line")),
    }[case]()
