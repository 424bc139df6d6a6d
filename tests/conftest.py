"""Shared fixtures."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """The environment for ``python -m search...`` subprocesses: bytecode caching on (torch's
    import otherwise recompiles every time, ~7 s a process), warnings off so stderr is the error."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONWARNINGS": "ignore"}
