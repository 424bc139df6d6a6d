"""``python -m search.report [overrides]``: one self-contained ``report.html`` per study, or one comparing studies.

- ``python -m search.report`` (with the overrides that named the study: ``experiment=``, ``study.name=``,
  ``results_dir=``) writes ``results/<study>/report.html`` and, with a local Chromium, PNG and SVG files of its
  figures in ``results/<study>/figures/``. ``python -m search`` writes the same at the end of every search.
- ``python -m search.report report.studies=[a,b]`` compares studies (each ``results_dir/<name>/study.db``, or all
  in ``study.storage``): fronts overlaid, hypervolumes side by side (each against its own reference point), in
  ``results/<report.name>/`` (default ``compare-a-b``).

The page works offline (plotly.js is inlined once). Hypervolume and its reference point: ``analysis.py``.
Bad input: one line naming the key, the value and what is allowed, exit status 2, nothing written.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
from omegaconf import DictConfig, ListConfig, OmegaConf

from . import analysis as an
from . import figures
from .outputs import OBJECTIVES, atomic_write, pareto_mask, trials_frame
from .plots import KB, PNG_INSTALL_HINT, find_chromium, pareto_figure
from .report_html import Cell, Page, Section, cards, esc, figure_div, key_values, page, table
from .selection import knee

log = logging.getLogger("search")

EXPORT_FORMATS = ("png", "svg")
DEFAULT_RESULTS = "results"


# --------------------------------------------------------------------------- loading


@dataclass
class StudyData:
    """A study and what its folder holds; the derived tables are computed once, on first use."""

    name: str
    study: optuna.Study
    out_dir: Path
    results_dir: str
    storage: str | None = None  # an explicit study.storage (None: the study's own study.db)
    df: pd.DataFrame = field(init=False)
    names: list[str] = field(init=False)  # parameter names in the order the space samples them
    config: dict[str, Any] = field(init=False)  # results/<study>/config.yaml ({} if absent)
    summary: dict[str, Any] = field(init=False)  # results/<study>/summary.json ({} if absent)

    def __post_init__(self) -> None:
        self.df = trials_frame(self.study)
        self.names = an.param_names(self.study)
        self.config = _read(self.out_dir / "config.yaml", lambda text: OmegaConf.to_container(OmegaConf.create(text)))
        self.summary = _read(self.out_dir / "summary.json", json.loads)

    @property
    def ref(self) -> an.Reference | None:
        return an.reference(self.df)

    def pick_command(self, number: int) -> str:
        """The command that bundles trial ``number`` for production."""
        parts = ["python -m search.pick", f"study.name={self.name}"]
        if self.results_dir != DEFAULT_RESULTS:
            parts.append(f"results_dir={self.results_dir}")
        if self.storage:
            parts.append(f"study.storage={self.storage}")
        return " ".join([*parts, f"pick.trial={number}"])


def _read(path: Path, parse: Callable[[str], Any]) -> dict[str, Any]:
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - a missing or unreadable file only leaves its rows out
        return {}
    return data if isinstance(data, dict) else {}


def plain_name(value: Any, key: str) -> str:
    name = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise ValueError(f"{key} must be a plain folder name, got {value!r}")
    return name


def locate(name: str, *, results_dir: str | Path, storage: str | None = None,
           key: str = "study.name") -> tuple[optuna.Study, str]:
    """The study a search wrote and its storage URL (never creates one)."""
    db = Path(results_dir) / name / "study.db"
    if not storage and not db.is_file():
        raise FileNotFoundError(f"{key}: no study at {db}; run `python -m search` with the same overrides first "
                                f"(results_dir={results_dir})")
    url = storage or f"sqlite:///{db.as_posix()}"
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError as exc:
        raise ValueError(f"{key}: no study {name!r} in {url}") from exc
    if len(study.directions) != len(OBJECTIVES):
        raise ValueError(f"{key}: study {name!r} has {len(study.directions)} objective(s), not {list(OBJECTIVES)}")
    return study, url


def load(name: str, *, results_dir: str | Path, storage: str | None = None, key: str = "study.name") -> StudyData:
    study, _ = locate(name, results_dir=results_dir, storage=storage, key=key)
    return StudyData(name, study, Path(results_dir) / name, str(results_dir), storage or None)


# --------------------------------------------------------------------------- one study


def study_figures(d: StudyData, *, importances: bool = True) -> dict[str, go.Figure]:
    model, data = (d.config.get(k) or {} for k in ("model", "data"))
    title = f"{d.name}: {model.get('name', 'model')} on {data.get('name', 'data')}"
    ref = d.ref
    imps = an.importances(d.study) if importances else "parameter importances switched off (report.importances=false)"
    return {
        "front": pareto_figure(d.df, title=title, names=d.names),
        "hypervolume": figures.history_figure(an.history(d.df, ref), ref=ref),
        "policy": figures.policy_figure(an.policy(d.df, d.names), an.front_rows(d.df)),
        "importance": figures.importance_figure(imps),
    }


def _uncompressed(df: pd.DataFrame) -> pd.Series | None:
    ok = an.done(df)
    base = ok[ok["baseline"] == "uncompressed"]
    return base.iloc[0] if len(base) else None


def _knee(df: pd.DataFrame) -> int | None:
    """What ``python -m search.pick`` with no rule would choose."""
    try:
        return int(knee(df)["number"])
    except ValueError:
        return None


def pareto_table(d: StudyData) -> str:
    front, base, knee = an.front_rows(d.df), _uncompressed(d.df), _knee(d.df)
    layers = an.layers_of(d.names)
    header = ["trial", "accuracy (%)", "vs uncompressed (points)", "size (B)", "smaller", "latency (ms)",
              "of uncompressed", "int8 layers", "configuration (layers: " + " · ".join(layers) + ")"
              if len(layers) <= 8 else "configuration (layers in model order)", "pick it for production"]
    rows = []
    for r in front.to_dict("records"):
        n = int(r["number"])
        badges = (f'<span class="badge">{esc(r["baseline"])}</span>' if r["baseline"] else "") + (
            '<span class="badge">knee</span>' if n == knee else "")
        acc, size, lat = float(r["accuracy"]), float(r["size_bytes"]), float(r["latency_ms"])
        int8 = r.get("int8_layers", np.nan)
        rows.append([
            Cell(f"#{n}{badges}", n), Cell(f"{acc * 100:.2f}", acc, True),
            _relative(None if base is None else (acc - base["accuracy"]) * 100, "{:+.2f}"),
            Cell(f"{size:,.0f}", size, True), _relative(None if base is None else base["size_bytes"] / size, "{:.1f}x"),
            Cell(f"{lat:.3f}", lat, True), _relative(None if base is None else lat / base["latency_ms"], "{:.2f}x"),
            Cell(str(int(int8)), int(int8), True) if pd.notna(int8) else Cell(""),
            Cell(f'<div class="cfg">{esc(chr(10).join(an.short_config(r, d.names, layers_line=False)))}</div>'),
            Cell(f'<code class="cmd">{esc(d.pick_command(n))}</code>'),
        ])
    return table(header, rows, table_id="pareto-table")


def _relative(value: float | None, fmt: str) -> Cell:
    """A number relative to the uncompressed baseline (empty in a study without one)."""
    return Cell("", None, True) if value is None else Cell(fmt.format(float(value)), float(value), True)


def _fmt_call(cfg: Mapping[str, Any] | None) -> str:
    if not cfg:
        return "unknown"
    target = str(cfg.get("_target_", "?")).rsplit(".", 1)[-1]
    args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k != "_target_")
    return f"{target}({args})"


def _space(d: StudyData) -> str:
    space = d.config.get("space") or {}
    counts = {k: sum(1 for n in d.names if an.split(n)[0] == k) for k in an.KNOBS}
    knobs = []
    for name, knob in (space.get("knobs") or {}).items():
        if not knob:
            continue
        shown = {k: v for k, v in knob.items() if k not in ("_target_", "include", "exclude")}
        layers = f" on {counts[name]} layer(s)" if counts.get(name) else ""
        knobs.append(f"{esc(name)}{layers}: <code>{esc(shown)}</code>")
    head = f"<b>{esc(space.get('name', 'unknown'))}</b>, {len(d.names)} parameters"
    student = space.get("student")
    if student:
        family = student.get("family") or (d.config.get("model") or {}).get("student") or {}
        target = str((family.get("net") or {}).get("_target_", "?")).rsplit(".", 1)[-1]
        knobs.insert(0, f"arch: <code>{esc(space.get('arch'))}</code>; students: {esc(target)} over "
                        f"<code>{esc(family.get('choices'))}</code>, compressed by {esc(student.get('knobs'))}")
    return head + ("<br>" + "<br>".join(knobs) if knobs else "")


def _wall(d: StudyData) -> str:
    if "wall_s" in d.summary:
        return f"{float(d.summary['wall_s']):,.0f} s (the whole search run, teacher included)"
    times = [(t.datetime_start, t.datetime_complete) for t in d.study.get_trials(deepcopy=False)
             if t.datetime_start and t.datetime_complete]
    if not times:
        return "unknown"
    span = max(c for _, c in times) - min(s for s, _ in times)
    return f"{span.total_seconds():,.0f} s (first trial start to last trial end)"


def _versions(d: StudyData) -> str:
    found = dict(d.summary.get("versions") or {})
    for pkg in ("plotly", "optuna-dashboard", "kaleido"):
        try:
            found.setdefault(pkg.replace("-", "_"), metadata.version(pkg))
        except metadata.PackageNotFoundError:
            pass
    return esc(", ".join(f"{k} {v}" for k, v in found.items()))


def _students(c: Mapping[str, Any]) -> str:
    """The student budget and early stopping, for a space that trains students."""
    if not (c.get("space") or {}).get("student"):
        return ""
    dist, stop = c.get("distill") or {}, c.get("early_stopping") or {}
    budget = f"{dist['steps']} steps" if dist.get("steps") else f"{dist.get('epochs', '?')} epoch(s)"
    text = (f"; students: distilled for {budget} at T {dist.get('temperature', '?')}, alpha {dist.get('alpha', '?')}"
            f"; early stopping {'on' if stop.get('enabled', True) else 'off'}")
    if stop.get("enabled", True) and stop.get("checkpoints"):
        text += f" (checkpoints {stop['checkpoints']}, slack {stop.get('slack')}, after {stop.get('min_curves')} curves)"
    return text


def what_ran(d: StudyData) -> dict[str, str]:
    c, s = d.config, d.summary
    model = c.get("model") or {}
    base = _uncompressed(d.df)
    params = f", {int(base['params']):,} parameters" if base is not None and pd.notna(base.get("params")) else ""
    teacher = (f"; teacher accuracy {s['teacher_val_accuracy']:.4f} validation, {s['teacher_test_accuracy']:.4f} test "
               f"({esc(s.get('teacher_source', ''))})" if "teacher_val_accuracy" in s else "")
    data = c.get("data") or {}
    study_cfg, recovery = c.get("study") or {}, c.get("recovery") or {}
    cost = d.study.user_attrs.get("cost_model") or s.get("cost_model") or {}
    states = d.df["state"].value_counts().to_dict() if len(d.df) else {}
    return {
        "study": f"<b>{esc(d.name)}</b> in <code>{esc(d.storage or d.out_dir / 'study.db')}</code>",
        "model": f"{esc(model.get('name', 'unknown'))}{params}{teacher}",
        "data": esc(f"{data.get('name', 'unknown')}: validation split of {data.get('val_size', '?')} images "
                    f"(seed {data.get('seed', '?')}) from {s.get('data', data.get('root', '?'))}"),
        "space": _space(d),
        "cost model and device": esc(", ".join(f"{k} {v}" for k, v in cost.items()) or "unknown"),
        "sampler": f"<code>{esc(_fmt_call(c.get('sampler')))}</code>",
        "budget": esc(f"{study_cfg.get('n_trials', '?')} searched trials"
                      + (" + the baselines" if study_cfg.get("baselines") else "")
                      + f", timeout {study_cfg.get('timeout_s') or 'none'}; recovery per trial: "
                      + ", ".join(f"{k} {v}" for k, v in recovery.items() if k in ("steps", "qat_steps", "batch_size"))
                      + _students(c)
                      + "; trials now: " + ", ".join(f"{v} {k}" for k, v in states.items())),
        "constraints": esc(", ".join(f"{k} {v}" for k, v in (study_cfg.get("constraints") or {}).items()
                                     if v is not None) or "none"),
        "wall time": esc(_wall(d)),
        "versions": _versions(d),
    }


def _cards(d: StudyData) -> dict[str, str]:
    df, ref = d.df, d.ref
    base = _uncompressed(df)
    out = {
        "trials finished": str(int(df["state"].isin(["COMPLETE", "FAIL", "PRUNED"]).sum())) if len(df) else "0",
        "failed": str(int((df["state"] == "FAIL").sum())) if len(df) else "0",
        **({"stopped early": str(int((df["state"] == "PRUNED").sum()))} if (df.get("state") == "PRUNED").any() else {}),
        "on the Pareto front": str(int(df["on_front"].sum())) if len(df) else "0",
        "hypervolume (% of box)": f"{an.hypervolume(df, ref) * 100:.2f}%",
    }
    if base is not None:
        out["uncompressed model"] = (f"{base['accuracy'] * 100:.2f}% · {base['size_bytes'] / KB:,.0f} KB · "
                                     f"{base['latency_ms']:.2f} ms")
    return out


def study_page(d: StudyData, figs: Mapping[str, go.Figure], links: Mapping[str, Mapping[str, str]]) -> str:
    ref = d.ref
    ref_text = esc(ref.describe()) if ref else "none yet (no completed feasible trial)"
    sections = [
        Section("summary", "Summary", cards(_cards(d))),
        Section("front", "Pareto front", figure_div(figs["front"], "fig-front", links=links.get("front")),
                "Accuracy (validation split) against the artifact's size and its measured latency: the three "
                "pairwise views and all three at once. Blue: the front; grey: dominated trials; labelled markers: the "
                "uncompressed model and the hand-made baselines. Hover a point for its values and configuration."),
        Section("hypervolume", "Hypervolume and front size over trials",
                figure_div(figs["hypervolume"], "fig-hypervolume", links=links.get("hypervolume")),
                f"Reference point: {ref_text}. Objectives are scaled by the reference model's size and latency "
                f"(accuracy as is); the hypervolume is the share of the box between the ideal point (accuracy 1, "
                f"size 0, latency 0) and the reference point that the feasible trials so far dominate."),
        Section("policy", "Per-layer policy of the front",
                figure_div(figs["policy"], "fig-policy", links=links.get("policy")),
                "Each column is one configuration on the Pareto front (most accurate on the left), each row a layer "
                "in model order; one map per knob. Darker cells are compressed harder, so dark rows show layers "
                "that tolerate it."),
        Section("importance", "Parameter importances",
                figure_div(figs["importance"], "fig-importance", links=links.get("importance")),
                "fANOVA (Optuna's FanovaImportanceEvaluator, seed 0) over the completed trials: the share of each "
                "objective's variance that each parameter explains. With few trials these are rough."),
        Section("pareto", "Pareto table", pareto_table(d),
                "Click a column header to sort. Each row's command replays that trial from its stored parameters "
                "and writes a verified bundle to <code>results/&lt;study&gt;/picked/&lt;trial&gt;/</code>. "
                "<i>knee</i>: what <code>python -m search.pick</code> with no rule picks."),
        Section("run", "What ran", key_values(what_ran(d), table_id="what-ran")),
    ]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return page(Page(
        title=f"Compression search: {d.name}",
        subtitle=f"accuracy ↑ · size ↓ · latency ↓ &nbsp;·&nbsp; {len(d.df)} trials &nbsp;·&nbsp; written {when}",
        sections=sections,
        footer=f"Hypervolume reference point: {ref_text}. Written by <code>python -m search.report</code>.",
    ))


# --------------------------------------------------------------------------- several studies


def joint_front(ds: Sequence[StudyData]) -> set[tuple[str, int]]:
    """(study, trial) pairs not dominated by any feasible trial of any of the studies."""
    parts = [(d.name, an.done(d.df)) for d in ds]
    labels = [(name, int(n)) for name, ok in parts for n in ok["number"]]
    if not labels:
        return set()
    values = np.vstack([ok[list(OBJECTIVES)].to_numpy(float) for _, ok in parts])
    mask = pareto_mask(values * np.array([-1.0, 1.0, 1.0]))  # accuracy is maximised
    return {label for label, keep in zip(labels, mask) if keep}


def comparison_figures(ds: Sequence[StudyData]) -> tuple[dict[str, go.Figure], set]:
    joint = joint_front(ds)
    figs = {
        "fronts": figures.comparison_front_figure({d.name: d.df for d in ds}, {d.name: d.names for d in ds}, joint),
        "hypervolumes": figures.comparison_hypervolume_figure({d.name: an.history(d.df, d.ref) for d in ds}),
    }
    return figs, joint


def comparison_page(ds: Sequence[StudyData], figs: Mapping[str, go.Figure], joint: set, out_dir: Path,
                    links: Mapping[str, Mapping[str, str]]) -> str:
    header = ["study", "sampler", "trials (complete / failed / stopped early)", "front size", "on the joint front",
              "hypervolume", "reference: uncompressed size (B) / latency (ms)", "wall time", "own report"]
    rows = []
    for d in ds:
        ref = d.ref
        hv = an.hypervolume(d.df, ref)
        own = d.out_dir / "report.html"
        href = os.path.relpath(own, out_dir) if own.is_file() else ""
        on_joint = sum(1 for s, _ in joint if s == d.name)
        rows.append([
            Cell(f"<b>{esc(d.name)}</b>", d.name), Cell(f"<code>{esc(_fmt_call(d.config.get('sampler')))}</code>"),
            Cell(" / ".join(str(int((d.df["state"] == k).sum())) for k in ("COMPLETE", "FAIL", "PRUNED"))),
            Cell(str(int(d.df["on_front"].sum())), int(d.df["on_front"].sum()), True),
            Cell(f"{on_joint} of {len(joint)}", on_joint, True), Cell(f"{hv * 100:.2f}%", hv, True),
            Cell(f"{ref.size_bytes:,.0f} / {ref.latency_ms:.3f}" if ref else "none", ref.latency_ms if ref else None,
                 True),
            Cell(esc(_wall(d))), Cell(f'<a href="{esc(href)}">report.html</a>' if href else "not written"),
        ])
    sections = [
        Section("studies", "Studies", table(header, rows, table_id="studies-table"),
                "The joint front is the set of trials not dominated by any trial of any study compared here."),
        Section("fronts", "Fronts overlaid", figure_div(figs["fronts"], "fig-fronts", links=links.get("fronts")),
                "Each study's own Pareto front; points ringed in black are on the joint front."),
        Section("hypervolumes", "Hypervolume side by side",
                figure_div(figs["hypervolumes"], "fig-hypervolumes", links=links.get("hypervolumes")),
                f"Each study against its own reference point: accuracy 0, size and latency {an.MARGIN:g} x those "
                "of its uncompressed baseline, timed in the same run (the table above lists them), so drift of the "
                "machine between runs cancels out; each value is the one the study's own report shows. See "
                "<code>search/analysis.py</code>."),
    ]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return page(Page(title="Compression searches compared: " + ", ".join(d.name for d in ds),
                     subtitle=f"accuracy ↑ · size ↓ · latency ↓ &nbsp;·&nbsp; written {when}", sections=sections,
                     footer="Written by <code>python -m search.report report.studies=[...]</code>."))


# --------------------------------------------------------------------------- files


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


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        report(cfg)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one line, non-zero exit
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
