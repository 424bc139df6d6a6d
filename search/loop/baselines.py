"""The policies a user would try by hand, written as parameters of the same space.

Each knob declares its own (``BaseKnob.baselines``: ``uniform_int8``, ``channels_50``, ``rank_50`` ...); each runs
through the same pipeline as a searched trial and is stored in the study, so every front is seen against them.
A policy that needs a knob the space lacks, or a value that is not among a knob's choices, is left out.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
from torch import nn

from spaces import ARCH, TEACHER, JointSpace, StudentSpace


def policies(space: JointSpace | StudentSpace, teacher: nn.Module) -> dict[str, dict[str, Any]]:
    """{baseline name: full params}; ``uncompressed`` is always first. In a space with students, every baseline
    compresses the trained model itself (``arch = teacher``)."""
    if isinstance(space, StudentSpace):
        return {name: {ARCH: TEACHER, **params} for name, params in space.teacher.policies(teacher).items()}
    return space.policies(teacher)


NEAR_CHANCE = 0.1  # a baseline that keeps less than this share of the uncompressed model's margin over chance


def near_chance(df: pd.DataFrame, space: JointSpace | StudentSpace, *, classes: int) -> list[str]:
    """One line per hand-made baseline (``df``: the trials frame once the baselines have run) whose fine-tuned
    accuracy is near chance (``NEAR_CHANCE``), naming the knobs its policy moves: at that setting they destroy
    this model."""
    ok = df[(df["state"] == "COMPLETE") & (df["baseline"] != "")]
    base = ok[ok["baseline"] == "uncompressed"]
    if not len(base) or "accuracy" not in df.columns or classes < 2:
        return []
    acc0, chance = float(base["accuracy"].iloc[0]), 1.0 / classes
    limit = chance + NEAR_CHANCE * (acc0 - chance)
    identity = (space.teacher if isinstance(space, StudentSpace) else space).identity()
    lines = []
    for _, b in ok[(ok["baseline"] != "uncompressed") & (ok["accuracy"] < limit)].iterrows():
        moved = sorted({key.partition(".")[0] for key, value in identity.items()
                        if key in b and pd.notna(b[key]) and b[key] != value})
        lines.append(f"baseline {b['baseline']} keeps {b['accuracy']:.3f} after fine-tuning, near chance ({chance:.2f}; "
                     f"the uncompressed model {acc0:.3f}): {', '.join(moved) or 'its knobs'} at that setting destroy "
                     "this model")
    return lines
