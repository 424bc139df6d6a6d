"""The report's figures beyond the front (``plots.py``): hypervolume history, per-layer policy map, parameter
importances, and the overlays that compare studies. Each takes what ``analysis.py`` computed and only draws.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..results.front import Reference, objective_names
from .analysis import front_rows, knob_classes, split
from .plots import format_value, front_grid, panels, plot_points, scene_axes, scene_of, shown

__all__ = ["comparison_front_figure", "comparison_hypervolume_figure", "history_figure", "importance_figure",
           "policy_figure", "sensitivity_figure", "blocks_figure"]

STUDY_COLOURS = ("#1f6fd1", "#e4572e", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
STUDY_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "pentagon", "hexagon", "cross", "x")
KNOB_COLOURS = ("#9467bd", "#2ca02c", "#8c564b", "#ff7f0e", "#1f6fd1", "#e377c2", "#17becf", "#bcbd22")


def knob_colour(knob: str) -> str:
    """A stable colour per knob (its place among the registered knobs); grey for what is not a knob."""
    order = list(knob_classes())
    return KNOB_COLOURS[order.index(knob) % len(KNOB_COLOURS)] if knob in order else "#7f7f7f"
_FONT = dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=13)


def _note(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=16, color="grey"))
    return fig


# --------------------------------------------------------------------------- one study


def history_figure(hist: pd.DataFrame, *, ref: Reference | None) -> go.Figure:
    """Hypervolume (% of the reference box) and front size after each finished trial."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4],
                        subplot_titles=("hypervolume after each trial", "trials on the Pareto front"))
    fig.update_layout(template="plotly_white", width=1100, height=560, font=_FONT, showlegend=True,
                      margin=dict(l=70, r=30, t=70, b=60), hovermode="x unified",
                      legend=dict(orientation="h", yanchor="bottom", y=1.06, xanchor="right", x=1))
    if hist.empty:
        return _note(fig, "no finished trials yet")
    x, hv = hist["number"], hist["hypervolume"] * 100
    fig.add_trace(go.Scatter(x=x, y=hv, mode="lines+markers", line_shape="hv", name="hypervolume",
                             marker=dict(size=6, color="#1f6fd1"), line=dict(color="#1f6fd1"),
                             hovertemplate="hypervolume %{y:.2f}%<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=hist["front_size"], mode="lines+markers", line_shape="hv", name="front size",
                             marker=dict(size=6, color="#2ca02c"), line=dict(color="#2ca02c"),
                             hovertemplate="front: %{y} trials<extra></extra>"), row=2, col=1)
    for state, name, style in (("FAIL", "failed trial", dict(symbol="x", size=9, color="#d62728")),
                               ("PRUNED", "stopped early", dict(symbol="triangle-down", size=8, color="#ff7f0e"))):
        rows = hist[hist["state"] == state]
        if len(rows):
            fig.add_trace(go.Scatter(x=rows["number"], y=rows["hypervolume"] * 100, mode="markers", name=name,
                                     marker=style, hovertemplate=f"trial %{{x}}: {name}<extra></extra>"), row=1, col=1)
    base = hist[hist["baseline"] != ""]
    if len(base):
        fig.add_vrect(x0=base["number"].min() - 0.5, x1=base["number"].max() + 0.5, fillcolor="#f2c14e",
                      opacity=0.15, line_width=0, annotation_text="baselines", annotation_position="top left")
    fig.update_yaxes(title_text="hypervolume (% of box)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="front size", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text="trial number", row=2, col=1)
    if ref is not None:
        fig.update_layout(title=dict(text=f"reference point: {ref.describe()}", font=dict(size=12), x=0.01))
    return fig


def _knob_scale(knob: str, table: pd.DataFrame) -> tuple[np.ndarray, dict]:
    """Colour values and colour-bar settings; dark = compressed harder, for every knob."""
    values = table.to_numpy(float)
    spec = knob_classes()[knob]
    scale = "Viridis" if spec.harder == "low" else "Viridis_r"
    if spec.scale == "log2":  # bit-widths on a log2 scale: 2, 4, 8, 32 evenly spaced
        seen = sorted({int(v) for v in values[np.isfinite(values)]} | {32})
        low = min(seen[0], 2)
        ticks = [b for b in (2, 4, 8, 16, 32) if low <= b <= 32]
        return np.log2(values), dict(colorscale=scale, zmin=np.log2(low), zmax=5.0,
                                     colorbar=dict(tickvals=np.log2(ticks).tolist(), ticktext=[str(t) for t in ticks]))
    return values, dict(colorscale=scale, zmin=0.0, zmax=1.0, colorbar=dict(tickformat=".0%"))


def policy_figure(tables: Mapping[str, pd.DataFrame], front: pd.DataFrame) -> go.Figure:
    """One heatmap per knob: layers (rows, model order) by front configurations (columns, most accurate left)."""
    knobs = [k for k, t in tables.items() if t.size]
    fig = make_subplots(rows=max(1, len(knobs)), cols=1, shared_xaxes=True, vertical_spacing=0.045,
                        subplot_titles=[knob_classes()[k].label for k in knobs] or [""])
    n_layers = max((len(t.index) for t in tables.values()), default=1)
    width = int(max(900, 80 * len(front) + 330))
    height = 70 + len(knobs or [1]) * (24 * n_layers + 70)
    fig.update_layout(template="plotly_white", font=_FONT, width=width, height=height,
                      margin=dict(l=130, r=150, t=60, b=110), plot_bgcolor="white")
    if not knobs or front.empty:
        return _note(fig, "no Pareto front yet")
    labels = [_column_label(r) for r in front.to_dict("records")]
    ticks = [_column_tick(r, objective_names(front)) for r in front.to_dict("records")]
    for i, knob in enumerate(knobs, start=1):
        table = tables[knob]
        z, scale = _knob_scale(knob, table)
        text = [[_cell(v) for v in row] for row in table.to_numpy(float)]
        hover = [[f"{lab}<br>layer {layer}<br>{knob_classes()[knob].label}: {_cell(v) or 'not searched'}"
                  for lab, v in zip(labels, row)] for layer, row in zip(table.index, table.to_numpy(float))]
        domain = fig.get_subplot(i, 1).yaxis.domain
        scale["colorbar"].update(len=domain[1] - domain[0], y=(domain[0] + domain[1]) / 2, yanchor="middle",
                                 thickness=12, x=1.01, title=dict(text=knob_classes()[knob].unit or "", side="right"))
        fig.add_trace(go.Heatmap(z=z, x=labels, y=list(table.index), text=text, texttemplate="%{text}",
                                 hovertext=hover, hoverinfo="text", hoverongaps=False, xgap=2, ygap=2,
                                 name=knob, **scale), row=i, col=1)
        fig.update_yaxes(autorange="reversed", row=i, col=1)
    fig.update_xaxes(tickvals=labels, ticktext=ticks, tickangle=0, tickfont=dict(size=11), row=len(knobs), col=1)
    fig.add_annotation(text="darker = compressed harder · columns: the Pareto front, most accurate first",
                       x=0, y=-0.02, xref="paper", yref="paper", yanchor="top", showarrow=False, yshift=-60,
                       font=dict(size=12, color="grey"))
    return fig


def _column_label(r: Mapping) -> str:
    return f"{r['baseline']} (#{int(r['number'])})" if r.get("baseline") else f"trial #{int(r['number'])}"


def _column_tick(r: Mapping, objectives: Sequence[str]) -> str:
    head = r["baseline"].replace("_", " ") if r.get("baseline") else f"#{int(r['number'])}"
    return "<br>".join([head, *(format_value(n, r[n]).split(" ", 1)[-1] for n in objectives)])


def _cell(v: float) -> str:
    if not np.isfinite(v):
        return ""
    return str(int(v)) if v == int(v) else f"{v:.2f}".removeprefix("0")


def importance_figure(imps: Mapping[str, Mapping[str, float]] | str, *, top: int = 12) -> go.Figure:
    """Horizontal bars per objective: the ``top`` parameters by fANOVA importance, coloured by knob."""
    names = list(imps) if isinstance(imps, Mapping) else ["parameter importances"]
    fig = make_subplots(rows=1, cols=len(names), horizontal_spacing=0.12, subplot_titles=names)
    fig.update_layout(template="plotly_white", font=_FONT, width=1300, height=110 + 26 * top, showlegend=True,
                      margin=dict(l=150, r=30, t=80, b=50),
                      legend=dict(orientation="h", yanchor="bottom", y=1.08, xanchor="center", x=0.5))
    if isinstance(imps, str):
        return _note(fig, imps)
    shown: set[str] = set()
    for col, objective in enumerate(names, start=1):
        items = sorted(imps[objective].items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
        present, known = {split(p)[0] for p, _ in items}, knob_classes()
        for knob in [k for k in known if k in present] + sorted(present - set(known)):
            rows = [(p, v) for p, v in items if split(p)[0] == knob]
            label = known[knob].label if knob in known else knob
            fig.add_trace(go.Bar(x=[v for _, v in rows], y=[p for p, _ in rows], orientation="h", name=label,
                                 legendgroup=knob, showlegend=knob not in shown,
                                 marker_color=knob_colour(knob),
                                 hovertemplate="%{y}: %{x:.1%}<extra>" + objective + "</extra>"), row=1, col=col)
            shown.add(knob)
        fig.update_yaxes(categoryorder="array", categoryarray=[p for p, _ in items], row=1, col=col)
        fig.update_xaxes(tickformat=".0%", title_text="share of variance", row=1, col=col)
    fig.update_layout(barmode="overlay")
    return fig


def sensitivity_figure(table: pd.DataFrame | None) -> go.Figure:
    """One heatmap per knob: layers (rows, model order) by the knob's choices (columns), coloured by the validation
    accuracy lost with that one layer changed alone (calibrated, not fine-tuned: ``search/sensitivity/sweep.py``)."""
    known = knob_classes()
    knobs = [] if table is None or table.empty else [k for k in known if k in set(table["knob"])]
    fig = make_subplots(rows=max(1, len(knobs)), cols=1, vertical_spacing=0.06,
                        subplot_titles=[f"{known[k].label}: accuracy lost (points)" for k in knobs] or [""])
    n_layers = 1 if not knobs else max(table[table["knob"] == k]["layer"].nunique() for k in knobs)
    fig.update_layout(template="plotly_white", font=_FONT, width=1000, height=90 + max(1, len(knobs)) * (26 * n_layers + 90),
                      margin=dict(l=130, r=90, t=60, b=50), plot_bgcolor="white")
    if not knobs:
        return _note(fig, "no sensitivity table (sensitivity.enabled=false)")
    for i, knob in enumerate(knobs, start=1):
        rows = table[table["knob"] == knob]
        pivot = rows.pivot_table(index="layer", columns="choice", values="loss", aggfunc="first", sort=False)
        pivot = pivot.reindex(list(dict.fromkeys(rows["layer"])))[sorted(pivot.columns)]
        z = pivot.to_numpy(float) * 100
        labels = [_cell(c) for c in pivot.columns]
        text = [["" if not np.isfinite(v) else f"{v:.1f}" for v in r] for r in z]
        domain = fig.get_subplot(i, 1).yaxis.domain
        fig.add_trace(go.Heatmap(z=z, x=labels, y=list(pivot.index), text=text, texttemplate="%{text}",
                                 colorscale="Reds", zmin=0, zmax=max(1.0, float(np.nanmax(z))), xgap=2, ygap=2,
                                 hovertemplate=f"{knob} %{{x}} on %{{y}}: %{{z:.2f}} points lost<extra></extra>",
                                 colorbar=dict(len=domain[1] - domain[0], y=(domain[0] + domain[1]) / 2,
                                               yanchor="middle", thickness=12, title=dict(text="points"))),
                      row=i, col=1)
        fig.update_yaxes(autorange="reversed", row=i, col=1)
        fig.update_xaxes(type="category", row=i, col=1)
    return fig


def blocks_figure(table: pd.DataFrame) -> go.Figure:
    """The blocks a derived student may drop (``results/<study>/importance.csv``, ``spaces.derive``), in model order:
    how much the teacher's logits move, relative to their norm, with that block alone skipped; the numbers are the
    order in which students drop them (1 first)."""
    fig = go.Figure(go.Bar(x=table["importance"], y=table["block"].astype(str), orientation="h",
                           text=[f"{int(r) + 1}" for r in table["rank"]], textposition="outside",
                           marker_color="#4c78a8",
                           hovertemplate="%{y}: logits move %{x:.3f} of their norm<extra></extra>"))
    fig.update_layout(template="plotly_white", font=_FONT, width=1000, height=120 + 26 * len(table),
                      margin=dict(l=160, r=60, t=40, b=50), plot_bgcolor="white")
    fig.update_xaxes(title_text="relative change of the teacher's logits with the block skipped")
    fig.update_yaxes(autorange="reversed", type="category")
    return fig


# --------------------------------------------------------------------------- several studies


def comparison_front_figure(frames: Mapping[str, pd.DataFrame], names: Mapping[str, Sequence[str]],
                            joint: set[tuple[str, int]]) -> go.Figure:
    """Each study's front over the others in every 2-D panel and the 3-D scene; points on the joint front of all
    studies ringed in black. The studies share their objectives (``page.comparison``)."""
    objectives = objective_names(next(iter(frames.values()))) if frames else ["accuracy"]
    pts = {s: plot_points(front_rows(df), names=names[s]) for s, df in frames.items()}
    every = pd.concat(pts.values()) if pts else pd.DataFrame()
    fig = front_grid(title="Pareto fronts compared", objectives=objectives, points=every)
    cell, xyz = scene_of(objectives), [shown(n) for n in scene_axes(objectives)]
    for i, (study, p) in enumerate(pts.items()):
        colour, symbol = STUDY_COLOURS[i % len(STUDY_COLOURS)], STUDY_SYMBOLS[i % len(STUDY_SYMBOLS)]
        if p.empty:
            continue
        on_joint = [(study, int(n)) in joint for n in p["number"]]
        ring = dict(color=["black" if j else "white" for j in on_joint], width=[2 if j else 1 for j in on_joint])
        hover = [f"<b>{study}</b><br>{h}" + ("<br>on the joint front" if j else "")
                 for h, j in zip(p["hover"], on_joint)]
        for k, panel in enumerate(panels(objectives)):
            fig.add_trace(go.Scatter(x=p[shown(panel.x)], y=p[shown(panel.y)], mode="markers", name=study,
                                     legendgroup=study, showlegend=k == 0,
                                     marker=dict(color=colour, symbol=symbol, size=11, line=ring),
                                     hovertext=hover, hoverinfo="text", customdata=p["number"]),
                          row=panel.row, col=panel.col)
        if cell is not None:
            fig.add_trace(go.Scatter3d(x=p[xyz[0]], y=p[xyz[1]], z=p[xyz[2]], mode="markers", name=study,
                                       legendgroup=study, showlegend=False,
                                       marker=dict(color=colour, size=5, line=dict(color="black", width=1)),
                                       hovertext=hover, hoverinfo="text", customdata=p["number"]),
                          row=cell[0], col=cell[1])
    return fig


def comparison_hypervolume_figure(histories: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Hypervolume after each trial, one line per study, and the final hypervolumes side by side."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35], horizontal_spacing=0.1,
                        subplot_titles=("hypervolume after each trial", "final hypervolume"))
    fig.update_layout(template="plotly_white", font=_FONT, width=1300, height=480, showlegend=True,
                      margin=dict(l=70, r=30, t=90, b=60),
                      title=dict(text="each study against its own reference point (1.1 x its uncompressed size and "
                                      "latency, accuracy 0)", font=dict(size=12), x=0.01, y=0.98, yref="container"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.08, xanchor="right", x=1))
    for i, (study, hist) in enumerate(histories.items()):
        colour = STUDY_COLOURS[i % len(STUDY_COLOURS)]
        final = float(hist["hypervolume"].iloc[-1] * 100) if len(hist) else 0.0
        fig.add_trace(go.Scatter(x=hist["number"], y=hist["hypervolume"] * 100, mode="lines+markers", line_shape="hv",
                                 name=study, legendgroup=study, line=dict(color=colour), marker=dict(size=5),
                                 hovertemplate=f"{study}: " + "%{y:.2f}% after trial %{x}<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Bar(x=[study], y=[final], name=study, legendgroup=study, showlegend=False,
                             marker_color=colour, text=[f"{final:.2f}%"], textposition="outside",
                             hovertemplate=f"{study}: {final:.2f}%<extra></extra>"), row=1, col=2)
    fig.update_yaxes(title_text="hypervolume (% of box)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    fig.update_xaxes(title_text="trial number", row=1, col=1)
    return fig
