"""Many workers on one host, in one command: ``python -m search study.workers=4`` (``make search WORKERS=4``).

``launch`` checks the config once, opens the study's storage (the journal by default, or ``study.storage=postgresql``:
a PostgreSQL cluster of its own under ``<results_dir>/postgres/``, ``search.storage.postgres``), starts the workers
(each ``python -m search.workers.child``, the same config with PyTorch's threads split evenly among them and its log
in ``results/<study>/workers/<i>.log``), shows one progress bar for the study, and when they are done writes the
tables, figures and report once. Workers on other hosts join the same study with the same command line and the
storage URL (``docs/guides/many-workers.md``).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import TrialState
from tqdm import tqdm

from ..app import setup
from ..loop.study import check_resume
from ..storage.backends import load_study

log = logging.getLogger("search")


def child_config(cfg: DictConfig, *, storage: str, threads: int, worker: int = 0) -> DictConfig:
    """A worker's config: the launcher's, one worker (index ``worker``), the resolved storage URL, its share of the
    threads."""
    child = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(child):
        child.study.workers = 1
        child.study.worker = worker
        child.study.storage = storage
        child.threads = threads
    return child


def launch(cfg: DictConfig) -> DictConfig:
    """Start ``study.workers`` worker processes on one study and wait for them; returns the config of worker 0
    (the storage resolved), from which ``search.run`` writes the outputs once."""
    n = int(cfg.study.workers)
    if isinstance(cfg.study.workers, bool) or n < 1:
        raise ValueError(f"study.workers must be an integer >= 1, got {cfg.study.workers!r}")
    checked = setup(cfg)  # bad input: one line, before any process starts
    name, out_dir = str(cfg.study.name), checked.out_dir
    if checked.storage.startswith("sqlite"):
        raise ValueError(f"study.workers={n}: SQLite is one process's storage; use study.storage=journal (one host), "
                         "study.storage=postgresql (a local server) or a PostgreSQL URL")
    check_resume(cfg, out_dir)
    per = max(1, int(cfg.threads) // n)
    folder = out_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"config.{i}.yaml").write_text(
            OmegaConf.to_yaml(child_config(cfg, storage=checked.storage, threads=per, worker=i)))
    log.info(f"{n} workers on study {name!r} ({checked.storage}), {per} PyTorch thread(s) each; logs in {folder}/")
    procs = []
    for i in range(n):
        out = (folder / f"{i}.log").open("w")
        procs.append((subprocess.Popen([sys.executable, "-m", "search.workers.child", str(folder / f"config.{i}.yaml")], stdout=out,
                                       stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}), out))
    bar = tqdm(total=int(cfg.study.n_trials), desc="study trials", unit="trial", dynamic_ncols=True)
    try:
        while any(p.poll() is None for p, _ in procs):
            time.sleep(2.0)
            try:
                trials = load_study(name, checked.storage).get_trials(deepcopy=False)
            except Exception:  # noqa: BLE001 - the first worker has not created the study yet
                continue
            searched = [t for t in trials if "baseline" not in t.user_attrs]
            done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in searched)
            bar.total = max(bar.total, len(searched))
            bar.n = done
            bar.set_postfix(baselines=sum(t.state == TrialState.COMPLETE for t in trials if "baseline" in t.user_attrs),
                            running=sum(t.state == TrialState.RUNNING for t in trials), refresh=False)
            bar.refresh()
    except KeyboardInterrupt:
        for p, _ in procs:
            p.terminate()
        raise
    finally:
        bar.close()
        for _, out in procs:
            out.close()
    codes = [p.wait() for p, _ in procs]
    for i, code in enumerate(codes):
        if code:
            log.info(f"worker {i} ended with exit status {code} (see {folder / f'{i}.log'})")
    if all(codes):
        raise RuntimeError(f"every worker failed; see {folder}/")
    return OmegaConf.load(folder / "config.0.yaml")
