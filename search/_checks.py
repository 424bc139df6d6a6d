"""Checks of config values that answer a wrong one with the one-line message every entry point prints."""
from __future__ import annotations

from typing import Any


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
