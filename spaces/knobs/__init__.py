"""The knobs: one module per compression technique, each declaring a ``spaces.BaseKnob`` subclass.

Every module in this folder is imported here, so a new knob is one new file (and its config,
``conf/space/knob/<name>.yaml``): its class registers itself in ``BaseKnob.registry`` and its public names
(the module's ``__all__``) become names of this package.
"""
from __future__ import annotations

import importlib
import pkgutil

from .._base import BaseKnob

__all__: list[str] = []
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_module, "__all__", ()):
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)


def registry() -> dict[str, type[BaseKnob]]:
    """Every knob class by its name, in phase order (then by name)."""
    return dict(sorted(BaseKnob.registry.items(), key=lambda kv: (kv[1].phase, kv[0])))
