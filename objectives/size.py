"""Size: the byte count of the packed weights file the engine writes for a trial."""
from __future__ import annotations

from typing import ClassVar

from ._base import BaseObjective, Outcome


class ArtifactSize(BaseObjective):
    """``len(artifact.packed)``: the file pick ships is exactly this long (minimise)."""

    name: ClassVar[str] = "size_bytes"
    direction = "minimize"
    unit = "bytes"
    label = "size (KB, log)"
    display = 1 / 1024
    log_axis = True

    def __call__(self, outcome: Outcome) -> float:
        return float(len(outcome.artifact.packed))
