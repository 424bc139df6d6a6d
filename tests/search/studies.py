"""What the searches of tests/search share: a part of Fashion-MNIST written as the user's arrays (``data=arrays``),
and a search run from overrides to its study."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna


def write_arrays(path: Path, splits, train: int, val: int | None = None, test: int | None = None) -> Path:
    """The first ``train``, ``val`` and ``test`` images of each split of ``splits`` (None: all) as ``path`` (.npz)."""
    parts = {"train": (splits.train_x, splits.train_y, train), "val": (splits.val_x, splits.val_y, val),
             "test": (splits.test_x, splits.test_y, test)}
    np.savez(path, **{f"{k}_{xy}": t[:n].numpy() for k, (x, y, n) in parts.items() for xy, t in zip("xy", (x, y))})
    return path


def searched(overrides: list[str]) -> tuple[Path, optuna.Study]:
    """``python -m search`` with ``overrides`` (they name ``study.name``): its results folder and its study."""
    from search.cli import compose_checked
    from search.run import run

    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("study.name="))
    out = run(compose_checked(overrides))
    return out, optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
