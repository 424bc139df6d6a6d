"""``python -m search [overrides]``: a compression search (``search.run.run``)."""
from __future__ import annotations

from .cli import entry


def main() -> None:
    entry("search.run:run")


if __name__ == "__main__":
    main()
