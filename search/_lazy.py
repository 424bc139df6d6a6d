"""Package attributes imported where first used (PEP 562), the way SciPy and scikit-image load their submodules:
``python -m search.pick`` runs the package's ``__init__`` before its ``__main__``, and an ``__init__`` that imported
its modules at once would load PyTorch and ONNX Runtime (four seconds) before a mistyped override could be
answered (``search/cli.py``: half a second)."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package`` that imports ``name`` from its module ``where[name]`` (``".bundle"``)."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name], package), name)

    return __getattr__
