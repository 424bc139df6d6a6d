"""Latency lookup tables for the ``lut`` cost model: built and validated on a device.
``python -m search.hardware build|validate [overrides]``."""
from .table import build, validate

__all__ = ["build", "validate"]
