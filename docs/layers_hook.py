"""MkDocs hook: ``<!-- layers -->`` on a page becomes a drawing of the layers ``pyproject.toml``'s import-linter
contracts declare (``[tool.importlinter]``), so the architecture page shows what ``lint-imports`` checks, from the
one place it is written. Each layers contract is drawn top to bottom: a layer may import the layers under it,
never one above; ``a | b`` in a layer: independent of each other."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
MARKER = re.compile(r"^<!-- layers -->$", re.MULTILINE)


def contracts(path: Path = PYPROJECT) -> list[dict]:
    """The import-linter contracts of ``path``, as declared."""
    return tomllib.loads(path.read_text())["tool"]["importlinter"]["contracts"]


def drawing(contract: dict) -> str:
    """One layers contract as text: its name, then its layers from the top, an arrow down between each two."""
    rows = [f"# {contract['name']}"]
    for i, layer in enumerate(contract["layers"]):
        if i:
            rows.append("    v")
        rows.append(" | ".join(part.strip() for part in layer.split("|")))
    return "\n".join(rows)


def expand(_: re.Match) -> str:
    layered = [c for c in contracts() if c["type"] == "layers"]
    others = [c for c in contracts() if c["type"] != "layers"]
    text = "\n\n".join(drawing(c) for c in layered)
    listed = "".join(f"\n- `{c['id']}` ({c['type']}): {c['name']}" for c in others)
    return f"```\n{text}\n```\n" + (f"\nAnd, checked with them:\n{listed}\n" if listed else "")


def on_page_markdown(markdown: str, **_) -> str:
    return MARKER.sub(expand, markdown)
