"""One report comparing studies: fronts overlaid, the joint front, hypervolumes side by side."""
from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from ..results.front import MARGIN, done, history, hypervolume, objective_names, pareto_mask, signs
from . import figures
from .data import StudyData
from .html import Cell, Page, Section, esc, figure_div, page, table
from .page import fmt_call, wall
from .plots import format_value


def same_objectives(ds: Sequence[StudyData]) -> list[str]:
    """The objectives every study shares (in the same order), else a ValueError naming them."""
    seen = {d.name: objective_names(d.df) for d in ds}
    first = next(iter(seen.values()))
    if any(v != first for v in seen.values()):
        raise ValueError(f"report.studies: studies with different objectives cannot be compared: {seen}")
    return first


def joint_front(ds: Sequence[StudyData]) -> set[tuple[str, int]]:
    """(study, trial) pairs not dominated by any feasible trial of any of the studies."""
    names = same_objectives(ds)
    parts = [(d.name, done(d.df)) for d in ds]
    labels = [(name, int(n)) for name, ok in parts for n in ok["number"]]
    if not labels:
        return set()
    values = np.vstack([ok[names].to_numpy(float) for _, ok in parts])
    mask = pareto_mask(values * signs(names))
    return {label for label, keep in zip(labels, mask) if keep}


def comparison_figures(ds: Sequence[StudyData]) -> tuple[dict[str, go.Figure], set]:
    joint = joint_front(ds)
    figs = {
        "fronts": figures.comparison_front_figure({d.name: d.df for d in ds}, {d.name: d.names for d in ds}, joint),
        "hypervolumes": figures.comparison_hypervolume_figure({d.name: history(d.df, d.ref) for d in ds}),
    }
    return figs, joint


def comparison_page(ds: Sequence[StudyData], figs: Mapping[str, go.Figure], joint: set, out_dir: Path,
                    links: Mapping[str, Mapping[str, str]]) -> str:
    header = ["study", "sampler", "trials (complete / failed / stopped early)", "front size", "on the joint front",
              "hypervolume", "reference: the uncompressed model", "wall time", "own report"]
    rows = []
    for d in ds:
        ref = d.ref
        hv = hypervolume(d.df, ref)
        own = d.out_dir / "report.html"
        href = os.path.relpath(own, out_dir) if own.is_file() else ""
        on_joint = sum(1 for s, _ in joint if s == d.name)
        rows.append([
            Cell(f"<b>{esc(d.name)}</b>", d.name), Cell(f"<code>{esc(fmt_call(d.config.get('sampler')))}</code>"),
            Cell(" / ".join(str(int((d.df["state"] == k).sum())) for k in ("COMPLETE", "FAIL", "PRUNED"))),
            Cell(str(int(d.df["on_front"].sum())), int(d.df["on_front"].sum()), True),
            Cell(f"{on_joint} of {len(joint)}", on_joint, True), Cell(f"{hv * 100:.2f}%", hv, True),
            Cell(esc(" · ".join(format_value(n, v) for n, v in ref.values.items())) if ref else "none"),
            Cell(esc(wall(d))), Cell(f'<a href="{esc(href)}">report.html</a>' if href else "not written"),
        ])
    sections = [
        Section("studies", "Studies", table(header, rows, table_id="studies-table"),
                "The joint front is the set of trials not dominated by any trial of any study compared here."),
        Section("fronts", "Fronts overlaid", figure_div(figs["fronts"], "fig-fronts", links=links.get("fronts")),
                "Each study's own Pareto front; points ringed in black are on the joint front."),
        Section("hypervolumes", "Hypervolume side by side",
                figure_div(figs["hypervolumes"], "fig-hypervolumes", links=links.get("hypervolumes")),
                f"Each study against its own reference point: accuracy 0, size and latency {MARGIN:g} x those "
                "of its uncompressed baseline, timed in the same run (the table above lists them), so drift of the "
                "machine between runs cancels out; each value is the one the study's own report shows. See "
                "<code>search/results/front.py</code>."),
    ]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return page(Page(title="Compression searches compared: " + ", ".join(d.name for d in ds),
                     subtitle=f"{esc(' · '.join(same_objectives(ds)))} &nbsp;·&nbsp; written {when}", sections=sections,
                     footer="Written by <code>python -m search.report report.studies=[...]</code>."))


