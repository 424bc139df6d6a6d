"""``run(cfg)``: everything ``python -m search`` does, as a plain function: the search in this process
(``search.process``), or ``study.workers`` worker processes on one study (``search.workers``) and, once they are
done, the outputs written once (``search.finish``).
"""
from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from .app import threads
from .finish import finish as write_study
from .process import search
from .workers.local import launch


def run(cfg: DictConfig, *, finish: bool = True) -> Path:
    """Search, record, write the outputs; returns ``results/<study>/``. PyTorch runs at ``cfg.threads`` threads.
    ``study.workers`` > 1: that many worker processes on one study (``search/workers/local.py``). ``finish=False``:
    the search only, no tables, figures or report (a worker whose launcher writes them)."""
    if cfg.study.get("workers", 1) != 1:
        started = time.time()
        first = launch(cfg)
        return write_study(first, started=started, workers=int(cfg.study.workers))
    with threads(cfg.threads):
        return search(cfg, finish=finish)
