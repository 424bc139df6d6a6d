"""``python -m search.workers.child <config.yaml>``: one worker of ``study.workers`` (``search/workers/local.py``
starts them): the search of the config, no outputs (the launcher writes them once, when all are done)."""
from __future__ import annotations

import logging.config
import sys

from omegaconf import OmegaConf

from ..cli import _LOGGING, BAD_INPUT, fail


def main() -> None:
    from ..run import run

    logging.config.dictConfig(_LOGGING)
    try:
        run(OmegaConf.load(sys.argv[1]), finish=False)
    except BAD_INPUT as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
