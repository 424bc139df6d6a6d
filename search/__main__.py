"""``python -m search [overrides]``: a compression search (``search.run.run``)."""
from __future__ import annotations

from .cli import entry


def main() -> None:
    from .run import run

    entry(run)


if __name__ == "__main__":
    main()
