"""Picking one trial of a finished study and shipping it: selection rules, the bundle, its verification and
its model card. ``python -m search.pick [overrides]``."""
from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from .bundle import load_model
    from ..results.selection import Rule, choose, knee
    from .verify import Tolerances, verify_bundle

__all__ = ["Rule", "choose", "knee", "load_model", "verify_bundle", "Tolerances"]
__getattr__ = exports(__name__, {"load_model": ".bundle", "Tolerances": ".verify", "verify_bundle": ".verify",
                                 **dict.fromkeys(["Rule", "choose", "knee"], "..results.selection")})
