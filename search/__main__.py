"""``python -m search [overrides]``: the Hydra entry point of a compression search."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from .run import run

    try:
        run(cfg)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one line, non-zero exit
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
