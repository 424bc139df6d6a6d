"""Latency lookup tables for the ``lut`` cost model: built and validated on a device.
``python -m search.hardware build|validate [overrides]``."""
from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from .table import build, validate

__all__ = ["build", "validate"]
__getattr__ = exports(__name__, {"build": ".table", "validate": ".table"})
