from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from search.report import plots

BASELINES = ("uncompressed", "uniform_int8")
FAIL_NUMBER = 9
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _df() -> pd.DataFrame:
    rows = [
        # number, state, accuracy, size_bytes, latency_ms, baseline, on_front
        (0, "COMPLETE", 0.91, 2_400_000.0, 2.8, "uncompressed", True),
        (1, "COMPLETE", 0.90, 620_000.0, 1.5, "uniform_int8", True),
        (2, "COMPLETE", 0.89, 400_000.0, 1.2, "", True),
        (3, "COMPLETE", 0.86, 150_000.0, 0.9, "", True),
        (4, "COMPLETE", 0.80, 60_000.0, 0.5, "", True),
        (5, "COMPLETE", 0.84, 500_000.0, 1.6, "", False),
        (6, "COMPLETE", 0.78, 300_000.0, 1.9, "", False),
        (7, "COMPLETE", 0.70, 90_000.0, 1.1, "", False),
        (8, "COMPLETE", 0.75, 800_000.0, 2.2, "", False),
        # finite values on purpose: it must be left out for its state, not its values
        (FAIL_NUMBER, "FAIL", 0.99, 10_000.0, 0.1, "", False),
        (10, "PRUNED", math.nan, math.nan, math.nan, "", False),
        (11, "COMPLETE", math.nan, 200_000.0, 1.0, "", False),  # non-finite objective
    ]
    cols = ["number", "state", "accuracy", "size_bytes", "latency_ms", "baseline", "on_front"]
    return pd.DataFrame(rows, columns=cols)


def _drawn_numbers(fig, trace_type: str) -> list[int]:
    return [int(n) for t in fig.data if t.type == trace_type for n in t.customdata]


def test_figure_layout_has_three_2d_axes_and_a_scene():
    fig = plots.pareto_figure(_df(), title="t")
    layout = fig.layout.to_plotly_json()
    assert sorted(k for k in layout if k.startswith("xaxis")) == ["xaxis", "xaxis2", "xaxis3"]
    assert sorted(k for k in layout if k.startswith("yaxis")) == ["yaxis", "yaxis2", "yaxis3"]
    assert "scene" in layout and not any(k.startswith("scene") and k != "scene" for k in layout)
    assert any(t.type == "scatter3d" for t in fig.data)
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis3.type == "log"
    for ax in (fig.layout.xaxis, fig.layout.yaxis, fig.layout.xaxis2, fig.layout.yaxis3):
        assert ax.title.text


def test_only_complete_finite_rows_are_drawn():
    fig = plots.pareto_figure(_df())
    expected = sorted([0, 1, 2, 3, 4, 5, 6, 7, 8])
    assert sorted(_drawn_numbers(fig, "scatter3d")) == expected
    assert sorted(_drawn_numbers(fig, "scatter")) == sorted(expected * 3)  # once per 2-D panel
    assert FAIL_NUMBER not in _drawn_numbers(fig, "scatter")


def test_baselines_are_labelled_and_legend_not_duplicated():
    fig = plots.pareto_figure(_df())
    names = " ".join(str(t.name) for t in fig.data)
    labels = {str(x) for t in fig.data if t.text is not None for x in t.text}
    for b in BASELINES:
        assert b in names and b in labels
    star = [t for t in fig.data if t.type == "scatter" and t.name == "baseline: uncompressed"]
    assert star and all(t.marker.symbol == "star" for t in star)
    shown = [t.name for t in fig.data if t.showlegend is not False]
    assert len(shown) == len(set(shown))
    hover = " ".join(h for t in fig.data for h in t.hovertext)
    assert "trial #2" in hover and "KB" in hover and "ms" in hover and "accuracy" in hover


def test_empty_input_still_gives_a_figure():
    fig = plots.pareto_figure(_df().assign(state="FAIL"))
    assert not _drawn_numbers(fig, "scatter")
    assert fig.layout.annotations  # the "no completed trials" note (plus subplot titles)


def test_write_pareto_figures(tmp_path):
    out = tmp_path / "figs"
    res = plots.write_pareto_figures(_df(), out, title="synthetic")
    html = res["html"]
    assert html == out / "pareto.html" and html.stat().st_size > 0
    text = html.read_text(encoding="utf-8")
    assert "plotly" in text.lower()
    assert not re.search(r"<script[^>]*\bsrc=", text)  # plotly.js inlined: works offline
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind
    if plots.find_chromium() is None:
        assert "apt-get install -y chromium" in res["png_skipped"]
        pytest.skip("no local Chromium: PNG export not testable here")
    assert "png_skipped" not in res, res.get("png_skipped")
    assert res["png"].read_bytes()[:8] == PNG_SIGNATURE


def test_png_can_be_switched_off(tmp_path):
    res = plots.write_pareto_figures(_df(), tmp_path, png=False)
    assert set(res) == {"html"} and not (tmp_path / "pareto.png").exists()


@pytest.mark.parametrize("browser", [None, "/bin/false"], ids=["missing", "broken"])
def test_png_failure_is_reported_not_raised(tmp_path, monkeypatch, browser):
    monkeypatch.setattr(plots, "find_chromium", lambda: browser)
    res = plots.write_pareto_figures(_df(), tmp_path)
    assert "png" not in res and "apt-get install -y chromium" in res["png_skipped"]
    assert (tmp_path / "pareto.html").stat().st_size > 0 and not (tmp_path / "pareto.png").exists()
