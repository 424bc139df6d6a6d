"""The report page of one study: summary cards, the figures, the Pareto table and what ran."""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from objectives import objective_class

from ..results.front import done, history, hypervolume, objective_names
from ..results.selection import knee
from . import analysis as an, figures
from .data import StudyData
from .html import Cell, Page, Section, cards, esc, figure_div, key_values, page, table
from .plots import format_value, pareto_figure


def study_figures(d: StudyData, *, importances: bool = True) -> dict[str, go.Figure]:
    model, data = (d.config.get(k) or {} for k in ("model", "data"))
    title = f"{d.name}: {model.get('name', 'model')} on {data.get('name', 'data')}"
    ref = d.ref
    imps = an.importances(d.study) if importances else "parameter importances switched off (report.importances=false)"
    return {
        "front": pareto_figure(d.df, title=title, names=d.names),
        "hypervolume": figures.history_figure(history(d.df, ref), ref=ref),
        "policy": figures.policy_figure(an.policy(d.df, d.names), an.front_rows(d.df)),
        "importance": figures.importance_figure(imps),
        **({"sensitivity": figures.sensitivity_figure(d.sensitivity)} if d.sensitivity is not None else {}),
        **({"blocks": figures.blocks_figure(d.blocks)} if d.blocks is not None and len(d.blocks) else {}),
    }


def uncompressed(df: pd.DataFrame) -> pd.Series | None:
    ok = done(df)
    base = ok[ok["baseline"] == "uncompressed"]
    return base.iloc[0] if len(base) else None


def _knee(df: pd.DataFrame) -> int | None:
    """What ``python -m search.pick`` with no rule would choose."""
    try:
        return int(knee(df)["number"])
    except ValueError:
        return None


def _objective_cells(name: str, value: float, base: pd.Series | None) -> tuple[list[str], list[Cell]]:
    """Header and cells of one objective: its value, and how it compares with the uncompressed model's."""
    spec = objective_class(name)
    unit = spec.label.partition("(")[2].rstrip(")").replace(", log", "")
    if not spec.relative:  # a fraction (accuracy): percent, and points against the uncompressed model
        head = [f"{name} (%)", "vs uncompressed (points)"]
        change = None if base is None else (value - base[name]) * 100
        return head, [Cell(f"{value * 100:.2f}", value, True), _relative(change, "{:+.2f}")]
    if spec.direction == "minimize" and spec.log_axis:  # sizes: how many times smaller
        head = [f"{name}", "smaller"]
        ratio = None if base is None or value <= 0 else base[name] / value
        return head, [Cell(f"{value:,.0f}", value, True), _relative(ratio, "{:.1f}x")]
    head = [f"{name}" + (f" ({unit})" if unit and unit not in name else ""), "of uncompressed"]
    ratio = None if base is None or not base[name] else value / base[name]
    shown_value = f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return head, [Cell(shown_value, value, True), _relative(ratio, "{:.2f}x")]


def pareto_table(d: StudyData) -> str:
    front, base, knee = an.front_rows(d.df), uncompressed(d.df), _knee(d.df)
    names = objective_names(d.df)
    layers = an.layers_of(d.names)
    header = ["trial"]
    for name in names:
        header += _objective_cells(name, 1.0, None)[0]
    header += ["int8 layers", "configuration (layers: " + " · ".join(layers) + ")"
               if len(layers) <= 8 else "configuration (layers in model order)", "pick it for production"]
    rows = []
    for r in front.to_dict("records"):
        n = int(r["number"])
        badges = (f'<span class="badge">{esc(r["baseline"])}</span>' if r["baseline"] else "") + (
            '<span class="badge">knee</span>' if n == knee else "")
        int8 = r.get("int8_layers", np.nan)
        row = [Cell(f"#{n}{badges}", n)]
        for name in names:
            row += _objective_cells(name, float(r[name]), base)[1]
        row += [
            Cell(str(int(int8)), int(int8), True) if pd.notna(int8) else Cell(""),
            Cell(f'<div class="cfg">{esc(chr(10).join(an.short_config(r, d.names, layers_line=False)))}</div>'),
            Cell(f'<code class="cmd">{esc(d.pick_command(n))}</code>'),
        ]
        rows.append(row)
    return table(header, rows, table_id="pareto-table")


def _relative(value: float | None, fmt: str) -> Cell:
    """A number relative to the uncompressed baseline (empty in a study without one)."""
    return Cell("", None, True) if value is None else Cell(fmt.format(float(value)), float(value), True)


def fmt_call(cfg: Mapping[str, Any] | None) -> str:
    if not cfg:
        return "unknown"
    target = str(cfg.get("_target_", "?")).rsplit(".", 1)[-1]
    args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k != "_target_")
    return f"{target}({args})"


def _space(d: StudyData) -> str:
    space = d.config.get("space") or {}
    counts = {k: sum(1 for n in d.names if an.split(n)[0] == k) for k in an.knob_classes()}
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
        if isinstance(family, str):  # the name of a family config, conf/space/family/<name>.yaml
            family = {"_target_": f"{family} family", "choices": f"conf/space/family/{family}.yaml"}
        # a fixed family builds its students with net; a family cut from the teacher (DerivedFamily) is its target
        target = str((family.get("net") or family).get("_target_", "?")).rsplit(".", 1)[-1]
        init = f", init {student.get('init')}" if "net" not in family and student.get("init") else ""
        knobs.insert(0, f"arch: <code>{esc(space.get('arch'))}</code>; students: {esc(target)}{esc(init)} over "
                        f"<code>{esc(family.get('choices'))}</code>, compressed by {esc(student.get('knobs'))}")
    return head + ("<br>" + "<br>".join(knobs) if knobs else "")


def wall(d: StudyData) -> str:
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
    base = uncompressed(d.df)
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
        "objectives": esc(", ".join(f"{n} ({objective_class(n).direction})" for n in objective_names(d.df))),
        "sampler": f"<code>{esc(fmt_call(c.get('sampler')))}</code>",
        "budget": esc(f"{study_cfg.get('n_trials', '?')} searched trials"
                      + (" + the baselines" if study_cfg.get("baselines") else "")
                      + f", timeout {study_cfg.get('timeout_s') or 'none'}; recovery per trial: "
                      + ", ".join(f"{k} {v}" for k, v in recovery.items() if k in ("steps", "qat_steps", "batch_size"))
                      + _students(c)
                      + "; trials now: " + ", ".join(f"{v} {k}" for k, v in states.items())),
        "constraints": esc(", ".join(f"{k} {v}" for k, v in (study_cfg.get("constraints") or {}).items()
                                     if v is not None) or "none"),
        "wall time": esc(wall(d)),
        "versions": _versions(d),
    }


def _cards(d: StudyData) -> dict[str, str]:
    df, ref = d.df, d.ref
    base = uncompressed(df)
    out = {
        "trials finished": str(int(df["state"].isin(["COMPLETE", "FAIL", "PRUNED"]).sum())) if len(df) else "0",
        "failed": str(int((df["state"] == "FAIL").sum())) if len(df) else "0",
        **({"stopped early": str(int((df["state"] == "PRUNED").sum()))} if (df.get("state") == "PRUNED").any() else {}),
        **({"screened only (low fidelity)": str(int((df["fidelity"] == "screen").sum()))}
           if "fidelity" in df.columns and (df["fidelity"] == "screen").any() else {}),
        "on the Pareto front": str(int(df["on_front"].sum())) if len(df) else "0",
        "hypervolume (% of box)": f"{hypervolume(df, ref) * 100:.2f}%",
    }
    if base is not None:
        out["uncompressed model"] = " · ".join(format_value(n, base[n]) for n in objective_names(df))
    return out


def study_page(d: StudyData, figs: Mapping[str, go.Figure], links: Mapping[str, Mapping[str, str]]) -> str:
    ref = d.ref
    ref_text = esc(ref.describe()) if ref else "none yet (no completed feasible trial)"
    names = objective_names(d.df)
    objectives = " · ".join(f"{n} {'↑' if objective_class(n).direction == 'maximize' else '↓'}" for n in names)
    sections = [
        Section("summary", "Summary", cards(_cards(d))),
        Section("front", "Pareto front", figure_div(figs["front"], "fig-front", links=links.get("front")),
                f"The study's objectives ({esc(objectives)}) pair by pair"
                + (", and the first three at once" if len(names) >= 3 else "")
                + ". Accuracy is on the validation split; size is the artifact's byte count; latency as the cost "
                "model measured it. Blue: the front; grey: dominated trials; labelled markers: the uncompressed model "
                "and the baselines. Hover a point for its values and configuration."),
        Section("hypervolume", "Hypervolume and front size over trials",
                figure_div(figs["hypervolume"], "fig-hypervolume", links=links.get("hypervolume")),
                f"Reference point: {ref_text}. Each objective measured against the reference model (size, latency, "
                f"...) is scaled by its value there, accuracy is taken as is; the hypervolume is the share of the box "
                f"between the ideal point (accuracy 1, the others 0) and the reference point that the feasible trials "
                f"so far dominate."),
        Section("policy", "Per-layer policy of the front",
                figure_div(figs["policy"], "fig-policy", links=links.get("policy")),
                "Each column is one configuration on the Pareto front (most accurate on the left), each row a layer "
                "in model order; one map per knob. Darker cells are compressed harder, so dark rows show layers "
                "that tolerate it."),
        Section("importance", "Parameter importances",
                figure_div(figs["importance"], "fig-importance", links=links.get("importance")),
                "fANOVA (Optuna's FanovaImportanceEvaluator, seed 0) over the completed trials: the share of each "
                "objective's variance that each parameter explains. With few trials these are rough."),
        *([Section("sensitivity", "Per-layer sensitivity",
                   figure_div(figs["sensitivity"], "fig-sensitivity", links=links.get("sensitivity")),
                   "Each knob, each layer it covers and each of its choices, that one layer changed alone on the "
                   "trained model (calibrated, not fine-tuned), scored on the first validation images: the accuracy "
                   "lost, in points. The anchors' baselines and the guided start are built from this table "
                   "(<code>results/&lt;study&gt;/sensitivity.csv</code>).")] if "sensitivity" in figs else []),
        *([Section("blocks", "Block importance",
                   figure_div(figs["blocks"], "fig-blocks", links=links.get("blocks")),
                   "The blocks a student cut from the teacher may drop (<code>space.student.family=derived</code>), "
                   "each skipped alone on the calibration images: how far the teacher's logits move, relative to "
                   "their norm. Students drop them in the order numbered, least change first "
                   "(<code>results/&lt;study&gt;/importance.csv</code>).")] if "blocks" in figs else []),
        Section("pareto", "Pareto table", pareto_table(d),
                "Click a column header to sort. Each row's command replays that trial from its stored parameters "
                "and writes a verified bundle to <code>results/&lt;study&gt;/picked/&lt;trial&gt;/</code>. "
                "<i>knee</i>: what <code>python -m search.pick</code> with no rule picks."),
        Section("run", "What ran", key_values(what_ran(d), table_id="what-ran")),
    ]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return page(Page(
        title=f"Compression search: {d.name}",
        subtitle=f"{esc(objectives)} &nbsp;·&nbsp; {len(d.df)} trials &nbsp;·&nbsp; written {when}",
        sections=sections,
        footer=f"Hypervolume reference point: {ref_text}. Written by <code>python -m search.report</code>.",
    ))


