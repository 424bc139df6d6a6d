"""Pareto-front figures for a finished search: one 2-D panel per pair of objectives, and a 3-D view of the
first three when there are three or more.

Computing (``plot_points``, ``panels``) is kept apart from drawing (``pareto_figure``) and from file output
(``write_pareto_figures``). Objectives are read by name from the trials frame; each is drawn as its class in
``objectives`` declares (``label``, ``display`` factor, ``log_axis``). PNG export uses kaleido with a locally
installed Chromium only; nothing here ever downloads a browser.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from objectives import objective_class

from ..results.front import objective_names
from .analysis import knob_params, short_config

__all__ = ["Panel", "find_chromium", "format_value", "front_grid", "panels", "pareto_figure", "plot_points",
           "scene_axes", "scene_of", "shown", "write_pareto_figures"]

PNG_SIZE = (1400, 1050)  # layout pixels (width, height)
PNG_INSTALL_HINT = "install a local Chromium to get PNGs (e.g. `apt-get install -y chromium`)"

_CHROME_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_CHROME_PATHS = ("/usr/bin/chromium",)
_UNCOMPRESSED = "uncompressed"
_DOMINATED_STYLE = dict(color="rgba(150,150,150,0.55)", size=6)
_SCREENED_STYLE = dict(color="rgba(150,150,150,0.35)", size=5, symbol="circle-open")
_FRONT_STYLE = dict(color="#1f6fd1", size=10, line=dict(color="white", width=1))
_SOLID_3D = {"dominated trials": dict(color="#b4b4b4"), "screened only (low fidelity)": dict(color="#d6d6d6")}  # WebGL scene drops rgba alpha poorly
# Scatter3d supports only a handful of symbols (no star), hence separate cycles.
_SYMBOLS_2D = ("diamond", "square", "triangle-up", "pentagon", "hexagon", "cross", "x", "triangle-down")
_SYMBOLS_3D = ("square", "cross", "x", "circle-open", "square-open", "diamond-open")
_BASELINE_COLOURS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_UNCOMPRESSED_COLOUR = "#d62728"


# --------------------------------------------------------------------------- computing


def shown(name: str) -> str:
    """The display column of objective ``name`` in ``plot_points`` (its value x the class's ``display``)."""
    return f"show:{name}"


def format_value(name: str, value: float) -> str:
    """``93.12% accuracy``-style text of one objective value, in its display unit."""
    spec = objective_class(name)
    x = value * spec.display
    label = spec.label.split(" (")[0]
    unit = spec.label.partition("(")[2].rstrip(")").replace(", log", "")
    if unit == "%":
        return f"{label} {x:.2f}%"
    number = f"{x:,.1f}" if abs(x) >= 10 else f"{x:.3f}"
    return f"{label} {number} {unit}".rstrip()


def plot_points(df: pd.DataFrame, *, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Drawable rows only (COMPLETE, finite objectives), with display columns added.

    Adds ``show:<objective>`` for each objective, ``hover`` and ``role`` ("baseline" / "front" / "dominated" /
    "screened": evaluated at the low fidelity only; a baseline keeps its baseline role even on the front). The hover shows the configuration in short,
    one line per knob, layers in the order of ``names`` (the study's parameter names; default: the knob columns
    of ``df``).
    """
    objectives = objective_names(df)
    d = df.copy()
    d["baseline"] = d.get("baseline", pd.Series("", index=d.index)).fillna("").astype(str)
    d["on_front"] = d.get("on_front", pd.Series(False, index=d.index)).fillna(False).astype(bool)
    state = d["state"].astype(str).str.rsplit(".", n=1).str[-1].str.upper()  # "TrialState.COMPLETE" too
    values = d[objectives].apply(pd.to_numeric, errors="coerce")
    keep = (state == "COMPLETE") & np.isfinite(values.to_numpy(dtype=float)).all(axis=1)
    d = d.loc[keep].copy()
    screened = d["fidelity"].fillna("full").astype(str) == "screen" if "fidelity" in d.columns else \
        pd.Series(False, index=d.index)
    d[objectives] = values.loc[keep]
    for name in objectives:
        d[shown(name)] = d[name] * objective_class(name).display
    d["role"] = np.where(d["baseline"] != "", "baseline", np.where(
        d["on_front"], "front", np.where(screened.to_numpy(), "screened", "dominated")))
    names = list(names) if names is not None else knob_params(d.columns)
    d["hover"] = [
        "<br>".join([_hover_head(row, objectives), *short_config(row, names)]) for row in d.to_dict("records")
    ]
    return d.reset_index(drop=True)


def _hover_head(row: dict, objectives: Sequence[str]) -> str:
    head = f"baseline: <b>{row['baseline']}</b>" if row["baseline"] else f"trial #{int(row['number'])}"
    if row["baseline"] and pd.notna(row["number"]):
        head += f" (trial #{int(row['number'])})"
    if row["on_front"]:
        head += " · on front"
    if str(row.get("fidelity", "")) == "screen":
        head += " · screened only (low fidelity)"
    return "<br>".join([head, *(format_value(n, row[n]) for n in objectives)])


@dataclass(frozen=True)
class Panel:
    """One 2-D view: objective ``x`` against objective ``y`` in grid cell (``row``, ``col``)."""

    x: str
    y: str
    row: int
    col: int


def _grid(objectives: Sequence[str]) -> tuple[int, int, list[tuple[str, str]], bool]:
    """(rows, cols, pairs, with a 3-D scene): a maximised objective goes on y; otherwise the first on x."""
    pairs = []
    for i, a in enumerate(objectives):
        for b in objectives[i + 1:]:
            up_a = objective_class(a).direction == "maximize"
            up_b = objective_class(b).direction == "maximize"
            pairs.append((b, a) if up_a and not up_b else (a, b))
    scene = len(objectives) >= 3
    cells = len(pairs) + int(scene)
    cols = 1 if cells == 1 else 2 if cells <= 4 else 3
    return math.ceil(cells / cols), cols, pairs, scene


def panels(objectives: Sequence[str]) -> list[Panel]:
    rows, cols, pairs, _ = _grid(objectives)
    return [Panel(x, y, 1 + k // cols, 1 + k % cols) for k, (x, y) in enumerate(pairs)]


def _axis(name: str, values: pd.Series) -> dict:
    spec = objective_class(name)
    if not spec.log_axis:
        return dict(title_text=spec.label)
    tickvals, ticktext = log_ticks(values)
    return dict(title_text=spec.label, type="log", tickvals=tickvals, ticktext=ticktext)


def front_grid(*, title: str, objectives: Sequence[str], points: pd.DataFrame) -> go.Figure:
    """The empty frame of the front figures: a titled 2-D panel per pair (``panels``) and, for three or more
    objectives, a 3-D scene of the first three; axes scaled to ``points`` (display columns, ``shown``)."""
    rows, cols, pairs, scene = _grid(objectives)
    specs = [[{"type": "xy"} for _ in range(cols)] for _ in range(rows)]
    titles = [f"{objective_class(x).label.split(' (')[0]} vs {objective_class(y).label.split(' (')[0]}"
              for x, y in pairs]
    if scene:
        k = len(pairs)
        specs[k // cols][k % cols] = {"type": "scene"}
        titles.append("all three objectives" if len(objectives) == 3 else " · ".join(objectives[:3]))
    fig = make_subplots(rows=rows, cols=cols, specs=specs, subplot_titles=titles, horizontal_spacing=0.09,
                        vertical_spacing=0.11 if rows <= 2 else 0.08)
    empty = points.empty
    for p in panels(objectives):
        fig.update_xaxes(**_axis(p.x, points.get(shown(p.x), pd.Series(dtype=float))), row=p.row, col=p.col)
        fig.update_yaxes(**_axis(p.y, points.get(shown(p.y), pd.Series(dtype=float))), row=p.row, col=p.col)
    _style_layout(fig, title, objectives=objectives, points=points, scene=scene, rows=rows, empty=empty)
    return fig


def scene_axes(objectives: Sequence[str]) -> list[str]:
    """The 3-D scene's x, y, z: the first three objectives, a maximised one (accuracy) on z."""
    return sorted(objectives[:3], key=lambda n: objective_class(n).direction == "maximize")


def scene_of(objectives: Sequence[str]) -> tuple[int, int] | None:
    """The grid cell of the 3-D scene, or None with fewer than three objectives."""
    rows, cols, pairs, scene = _grid(objectives)
    return (1 + len(pairs) // cols, 1 + len(pairs) % cols) if scene else None


def log_ticks(values) -> tuple[list[float], list[str]]:
    """1-2-5 tick positions (and short labels such as "500", "2k") covering ``values`` on a log axis."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return [], []
    lo, hi = float(v.min()), float(v.max())
    ticks = [m * 10.0**e for e in range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
             for m in (1, 2, 5)]
    below = [t for t in ticks if t <= lo]
    above = [t for t in ticks if t >= hi]
    lo_t, hi_t = (below[-1] if below else ticks[0]), (above[0] if above else ticks[-1])
    ticks = [t for t in ticks if lo_t <= t <= hi_t]
    return ticks, [_short_number(t) for t in ticks]


def _short_number(x: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:g}{suffix}"
    return f"{x:g}"


def baseline_styles(names) -> dict[str, dict]:
    """Stable marker style per baseline name; "uncompressed" is a big red star."""
    styles: dict[str, dict] = {}
    others = sorted(n for n in set(names) if n and n != _UNCOMPRESSED)
    for i, name in enumerate(others):
        styles[name] = dict(
            symbol=_SYMBOLS_2D[i % len(_SYMBOLS_2D)],
            symbol3d=_SYMBOLS_3D[i % len(_SYMBOLS_3D)],
            color=_BASELINE_COLOURS[i % len(_BASELINE_COLOURS)],
            size=13,
        )
    if _UNCOMPRESSED in set(names):
        styles[_UNCOMPRESSED] = dict(symbol="star", symbol3d="diamond", color=_UNCOMPRESSED_COLOUR, size=20)
    return styles


# --------------------------------------------------------------------------- drawing


def pareto_figure(df: pd.DataFrame, *, title: str = "", names: Sequence[str] | None = None) -> go.Figure:
    """Every pair of objectives in 2-D (and the first three in 3-D): front, dominated trials, baselines."""
    objectives = objective_names(df)
    pts = plot_points(df, names=names)
    fig = front_grid(title=title, objectives=objectives, points=pts)
    styles = baseline_styles(pts["baseline"])
    for i, p in enumerate(panels(objectives)):
        for trace in _panel_traces(pts, styles, shown(p.x), shown(p.y), first=i == 0):
            fig.add_trace(trace, row=p.row, col=p.col)
    cell = scene_of(objectives)
    if cell is not None:
        for trace in _scene_traces(pts, styles, [shown(n) for n in scene_axes(objectives)]):
            fig.add_trace(trace, row=cell[0], col=cell[1])
    return fig


def _groups(pts: pd.DataFrame, styles: dict[str, dict]):
    """(legend name, rows, marker, is_baseline, 3-D marker) in drawing order."""
    yield "screened only (low fidelity)", pts[pts["role"] == "screened"], _SCREENED_STYLE, False, _SCREENED_STYLE
    yield "dominated trials", pts[pts["role"] == "dominated"], _DOMINATED_STYLE, False, _DOMINATED_STYLE
    yield "Pareto front", pts[pts["role"] == "front"], _FRONT_STYLE, False, _FRONT_STYLE
    for name, st in styles.items():
        rows = pts[pts["baseline"] == name]
        m2 = dict(symbol=st["symbol"], color=st["color"], size=st["size"], line=dict(color="black", width=1))
        m3 = dict(symbol=st["symbol3d"], color=st["color"], size=st["size"] * 0.5, line=dict(color="black", width=1))
        yield f"baseline: {name}", rows, m2, True, m3


def _panel_traces(pts, styles, x: str, y: str, *, first: bool) -> list[go.Scatter]:
    traces = []
    for name, rows, marker, is_base, _ in _groups(pts, styles):
        if rows.empty:
            continue
        traces.append(
            go.Scatter(
                x=rows[x], y=rows[y], name=name, legendgroup=name, showlegend=first,
                mode="markers+text" if is_base else "markers", marker=marker,
                text=rows["baseline"] if is_base else None, textposition="top center",
                textfont=dict(size=11, color=marker["color"]) if is_base else None,
                hovertext=rows["hover"], hoverinfo="text", customdata=rows["number"],
            )
        )
    return traces


def _scene_traces(pts, styles, xyz: Sequence[str]) -> list[go.Scatter3d]:
    traces = []
    for name, rows, _, is_base, marker in _groups(pts, styles):
        if rows.empty:
            continue
        traces.append(
            go.Scatter3d(
                x=rows[xyz[0]], y=rows[xyz[1]], z=rows[xyz[2]], name=name,
                legendgroup=name, showlegend=False, mode="markers+text" if is_base else "markers",
                marker=marker if is_base else {**marker, "size": marker["size"] * 0.6, **_SOLID_3D.get(name, {})},
                text=rows["baseline"] if is_base else None, textposition="top center",
                textfont=dict(size=10, color=marker["color"]) if is_base else None,
                hovertext=rows["hover"], hoverinfo="text", customdata=rows["number"],
            )
        )
    return traces


def _style_layout(fig: go.Figure, title: str, *, objectives: Sequence[str], points: pd.DataFrame, scene: bool,
                  rows: int, empty: bool) -> None:
    arrows = " · ".join(f"{n} {'↑' if objective_class(n).direction == 'maximize' else '↓'}" for n in objectives)
    fig.update_layout(
        title=dict(text=f"{title} ({arrows})" if title else f"Pareto front: {arrows}",
                   x=0.5, xanchor="center", y=0.985, yref="container", yanchor="top"),
        template="plotly_white",
        width=PNG_SIZE[0],
        height=PNG_SIZE[1] if rows <= 2 else int(PNG_SIZE[1] * rows / 2),
        margin=dict(l=70, r=30, t=140, b=60),
        legend=dict(orientation="h", yanchor="bottom", y=1.035, xanchor="center", x=0.5),
        hoverlabel=dict(align="left", font=dict(family="monospace", size=12)),
    )
    if scene:
        axes = {}
        for axis, name in zip(("xaxis", "yaxis", "zaxis"), scene_axes(objectives)):
            a = _axis(name, points.get(shown(name), pd.Series(dtype=float)))
            axes[axis] = dict(title=dict(text=a.pop("title_text")), **a)
        fig.update_layout(scene=dict(
            **axes, camera=dict(eye=dict(x=1.5, y=-1.5, z=0.7), center=dict(x=0, y=0, z=-0.08)),
            # fixed proportions: "auto" follows the data ranges and can make the box too tall to fit its cell
            aspectmode="manual", aspectratio=dict(x=1, y=1, z=0.8)))
    if empty:
        fig.add_annotation(text="no completed trials to plot", x=0.5, y=0.5, xref="paper", yref="paper",
                           showarrow=False, font=dict(size=18, color="grey"))


# --------------------------------------------------------------------------- output


def find_chromium() -> str | None:
    """Path of a locally installed Chromium/Chrome, or None. Never downloads one."""
    for name in _CHROME_NAMES[:1]:
        if found := shutil.which(name):
            return found
    for path in _CHROME_PATHS:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    for name in _CHROME_NAMES[1:]:
        if found := shutil.which(name):
            return found
    return None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _png_bytes(fig: go.Figure, chromium: str) -> bytes:
    """Render with kaleido against the given local browser; MathJax off (it would come from a CDN)."""
    import kaleido

    return kaleido.calc_fig_sync(
        fig.to_dict(),
        opts=dict(format="png", width=PNG_SIZE[0], height=PNG_SIZE[1], scale=1),
        kopts=dict(path=chromium, mathjax=False, timeout=120),
    )


def write_pareto_figures(
    df: pd.DataFrame, out_dir: Path, *, title: str = "", png: bool = True
) -> dict[str, Path | str]:
    """Write ``pareto.html`` (self-contained) and, if possible, ``pareto.png`` into ``out_dir``.

    PNG export never raises: when it is impossible or fails, the reason is returned
    under ``"png_skipped"`` instead of a ``"png"`` path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = pareto_figure(df, title=title)
    html_path = out_dir / "pareto.html"
    _atomic_write(html_path, fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8"))
    result: dict[str, Path | str] = {"html": html_path}
    if not png:
        return result
    chromium = find_chromium()
    if chromium is None:
        result["png_skipped"] = f"no Chromium/Chrome found on PATH or at /usr/bin/chromium; {PNG_INSTALL_HINT}"
        return result
    try:
        png_path = out_dir / "pareto.png"
        _atomic_write(png_path, _png_bytes(fig, chromium))
        result["png"] = png_path
    except Exception as exc:  # noqa: BLE001 - a missing PNG must never sink a run
        result["png_skipped"] = f"PNG export with {chromium} failed ({type(exc).__name__}: {exc}); {PNG_INSTALL_HINT}"
    return result
