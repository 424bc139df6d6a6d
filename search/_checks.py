"""The config's folder and the checks of config values that answer a wrong one with the one-line message every
entry point prints (``BAD_INPUT``: the exceptions ``search.cli`` turns into that line and exit status 2). A leaf:
it imports nothing of the engine, so every layer may use it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

CONF = Path(__file__).resolve().parents[1] / "conf"
BAD_INPUT = (ValueError, FileNotFoundError, LookupError)


def whole(key: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer (not a bool) >= ``minimum``; else a ValueError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config (plain dicts) as {dotted key: value}; an empty section is one key."""
    if not isinstance(config, dict) or not config:
        return {prefix.rstrip("."): config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flat(value, f"{prefix}{key}."))
    return out


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether dotted ``key`` is one of ``prefixes`` or inside one of them (``report.png`` is under ``report``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)
