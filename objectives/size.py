"""Size: the byte count of the packed weights file the engine writes for a trial."""
from __future__ import annotations

from typing import Any, ClassVar

from ._base import BaseObjective


class ArtifactSize(BaseObjective):
    """``len(artifact.packed)``: the file pick ships is exactly this long (minimise)."""

    name: ClassVar[str] = "size_bytes"
    direction = "minimize"
    unit = "bytes"

    def __call__(self, artifact: Any) -> float:
        return float(len(artifact.packed))
