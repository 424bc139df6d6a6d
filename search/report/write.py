"""``python -m search.report [overrides]``: one self-contained ``report.html`` per study, or one comparing studies.

- ``python -m search.report`` (with the overrides that named the study: ``experiment=``, ``study.name=``,
  ``results_dir=``) writes ``results/<study>/report.html`` and, with a local Chromium, PNG and SVG files of its
  figures in ``results/<study>/figures/``. ``python -m search`` writes the same at the end of every search.
- ``python -m search.report report.studies=[a,b]`` compares studies (each ``results_dir/<name>/study.db``, or all
  in ``study.storage``): fronts overlaid, hypervolumes side by side (each against its own reference point), in
  ``results/<report.name>/`` (default ``compare-a-b``).

The page works offline (plotly.js is inlined once). Hypervolume and its reference point: ``search/results/front.py``.
Bad input: one line naming the key, the value and what is allowed, exit status 2, nothing written.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..results.outputs import atomic_write
from .compare import comparison_figures, comparison_page
from .data import StudyData, load, plain_name
from .page import study_figures, study_page
from .plots import PNG_INSTALL_HINT, find_chromium

log = logging.getLogger("search")

EXPORT_FORMATS = ("png", "svg")


def export_figures(figs: Mapping[str, go.Figure], folder: Path) -> dict[str, Any]:
    """``folder/<name>.png`` and ``.svg`` for every figure through kaleido and a local Chromium (one browser
    for all). Never raises: ``{"files": [...]}`` or ``{"skipped": why, "files": []}``."""
    chromium = find_chromium()
    if chromium is None:
        return {"files": [], "skipped": f"no Chromium/Chrome found on PATH or at /usr/bin/chromium; {PNG_INSTALL_HINT}"}
    import kaleido

    for noisy in ("kaleido", "choreographer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".export-"))
    try:
        jobs = [{"fig": fig.to_dict(), "path": str(staging / f"{name}.{fmt}"),
                 "opts": dict(format=fmt, width=fig.layout.width or 1200, height=fig.layout.height or 700, scale=1)}
                for name, fig in figs.items() for fmt in EXPORT_FORMATS]
        kaleido.write_fig_from_object_sync(jobs, kopts=dict(path=chromium, mathjax=False, timeout=120),
                                           cancel_on_error=True)
        files = []
        for job in jobs:
            src = Path(job["path"])
            os.chmod(src, 0o644)
            os.replace(src, folder / src.name)
            files.append(folder / src.name)
        return {"files": files}
    except Exception as exc:  # noqa: BLE001 - figures are a convenience; the HTML report must still be written
        return {"files": [], "skipped": f"export with {chromium} failed ({type(exc).__name__}: {exc}); "
                                        f"{PNG_INSTALL_HINT}"}
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _links(figs: Mapping[str, go.Figure], exported: Sequence[Path]) -> dict[str, dict[str, str]]:
    names = {p.name for p in exported}
    return {name: {fmt.upper(): f"figures/{name}.{fmt}" for fmt in EXPORT_FORMATS if f"{name}.{fmt}" in names}
            for name in figs}


def write(out_dir: Path, figs: Mapping[str, go.Figure], render: Callable[[dict], str], *, png: bool) -> dict[str, Any]:
    """Figures first (``figures/``), then ``report.html`` in one atomic write."""
    exported = export_figures(figs, out_dir / "figures") if png else {"files": [], "skipped": "png=false"}
    html_path = atomic_write(out_dir / "report.html", render(_links(figs, exported["files"])))
    return {"html": html_path, **exported}


def write_study_report(d: StudyData, *, png: bool = True, importances: bool = True) -> dict[str, Any]:
    figs = study_figures(d, importances=importances)
    return write(d.out_dir, figs, lambda links: study_page(d, figs, links), png=png)


def write_comparison(ds: Sequence[StudyData], out_dir: Path, *, png: bool = True) -> dict[str, Any]:
    figs, joint = comparison_figures(ds)
    return write(out_dir, figs, lambda links: comparison_page(ds, figs, joint, out_dir, links), png=png)


def _announce(result: Mapping[str, Any]) -> None:
    log.info(f"report: {result['html']}")
    if result.get("files"):
        log.info(f"figures: {', '.join(p.name for p in result['files'])} in {result['files'][0].parent}/")
    elif result.get("skipped") and result["skipped"] != "png=false":
        log.info(f"PNG/SVG figures not written: {result['skipped']}")


def after_search(study: optuna.Study, cfg: DictConfig, out_dir: Path, *, log: Callable[[str], None] = log.info) -> None:
    """``report.html`` at the end of a search; a failure is reported, never raised (the search's files stay)."""
    try:
        d = StudyData(study.study_name, study, Path(out_dir), str(cfg.results_dir), cfg.study.storage or None)
        importances = bool((cfg.get("report") or {}).get("importances", True))
        result = write_study_report(d, png=bool(cfg.png), importances=importances)
        _announce(result)
    except Exception as exc:  # noqa: BLE001
        log(f"report.html not written ({type(exc).__name__}: {exc}); retry with `python -m search.report` "
            "and the same overrides")


# --------------------------------------------------------------------------- CLI


def _studies(cfg: DictConfig) -> list[str] | None:
    value = cfg.get("report", {}).get("studies")
    if value is None:
        return None
    if not isinstance(value, (list, ListConfig)) or len(value) < 2:
        raise ValueError(f"report.studies must be a list of at least two study names, e.g. report.studies=[a,b], "
                         f"got {OmegaConf.to_container(value) if isinstance(value, ListConfig) else value!r}")
    names = [plain_name(v, "report.studies") for v in value]
    if len(set(names)) != len(names):
        raise ValueError(f"report.studies: each study once, got {names}")
    return names


def report(cfg: DictConfig) -> dict[str, Any]:
    """Everything ``python -m search.report`` does; checks every input before writing anything."""
    rcfg = cfg.get("report") or {}
    importances = rcfg.get("importances", True)
    if not isinstance(importances, bool):
        raise ValueError(f"report.importances must be true or false, got {importances!r}")
    names, storage = _studies(cfg), cfg.study.storage or None
    if names is None:
        d = load(plain_name(cfg.study.name, "study.name"), results_dir=cfg.results_dir, storage=storage)
        result = write_study_report(d, png=bool(cfg.png), importances=importances)
    else:
        folder = plain_name(rcfg.get("name") or "compare-" + "-".join(names), "report.name")
        ds = [load(n, results_dir=cfg.results_dir, storage=storage, key="report.studies") for n in names]
        result = write_comparison(ds, Path(cfg.results_dir) / folder, png=bool(cfg.png))
    _announce(result)
    return result
