"""``python -m search.workers.child <config.yaml>``: one worker of ``study.workers`` (``search/workers/local.py``
starts them): the search of the config, no outputs (the launcher writes them once, when all are done)."""
from __future__ import annotations

import logging.config
import sys

from omegaconf import OmegaConf

from ..cli import _LOGGING, fail
from .._checks import BAD_INPUT
from ..app import threads
from ..process import search


def main() -> None:
    logging.config.dictConfig(_LOGGING)
    cfg = OmegaConf.load(sys.argv[1])
    try:
        with threads(cfg.threads):
            search(cfg, finish=False)
    except BAD_INPUT as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
