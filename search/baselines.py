"""The policies a user would try by hand, written as parameters of the same space.

Each knob declares its own (``BaseKnob.baselines``: ``uniform_int8``, ``channels_50``, ``rank_50`` ...); each runs
through the same pipeline as a searched trial and is stored in the study, so every front is seen against them.
A policy that needs a knob the space lacks, or a value that is not among a knob's choices, is left out.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from spaces import ARCH, TEACHER, JointSpace, StudentSpace


def policies(space: JointSpace | StudentSpace, teacher: nn.Module) -> dict[str, dict[str, Any]]:
    """{baseline name: full params}; ``uncompressed`` is always first. In a space with students, every baseline
    compresses the trained model itself (``arch = teacher``)."""
    if isinstance(space, StudentSpace):
        return {name: {ARCH: TEACHER, **params} for name, params in space.teacher.policies(teacher).items()}
    return space.policies(teacher)
