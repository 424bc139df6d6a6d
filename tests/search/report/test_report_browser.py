"""report.html and the dashboard in a real headless Chromium (skipped where there is none): no JavaScript
error, every figure drawn, the Pareto table as long as the front; the dashboard served on 127.0.0.1 and
stopped cleanly."""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from search import report as rp
from search.results.outputs import trials_frame

pytestmark = pytest.mark.slow  # a headless browser: in make test, out of -m "not slow"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory, study_maker) -> Path:
    root = tmp_path_factory.mktemp("reports") / "results"
    study_maker(root, "tpe", seed=1)
    study_maker(root, "nsga2", seed=2, n_trials=8, failed=0)
    return root


def test_study_report_renders_with_no_error_and_a_full_table(results, report_page, browser):
    d = rp.load("tpe", results_dir=results)
    rp.write_study_report(d, png=False)
    shown = report_page(d.out_dir / "report.html")
    assert [f["id"] for f in shown["figures"]] == ["fig-front", "fig-hypervolume", "fig-policy", "fig-importance"]
    assert shown["canvases"], "the 3-D view has no WebGL canvas"
    assert shown["sections"] == ["summary", "front", "hypervolume", "policy", "importance", "pareto", "run"]
    front = int(trials_frame(d.study)["on_front"].sum())
    assert browser.evaluate("document.querySelectorAll('#pareto-table tbody tr').length") == front
    # sortable: clicking "size (B)" twice gives ascending then descending sizes
    sizes = "[...document.querySelectorAll('#pareto-table tbody tr')].map(r => +r.cells[3].dataset.sort)"
    browser.evaluate("document.querySelectorAll('#pareto-table th')[3].click()")
    ascending = browser.evaluate(sizes)
    browser.evaluate("document.querySelectorAll('#pareto-table th')[3].click()")
    assert ascending == sorted(ascending) and browser.evaluate(sizes) == sorted(ascending, reverse=True)
    commands = browser.evaluate("[...document.querySelectorAll('#pareto-table code.cmd')].map(c => c.textContent)")
    assert all(re.fullmatch(r"python -m search\.pick study\.name=tpe results_dir=\S+ pick\.trial=\d+", c)
               for c in commands) and len(commands) == front
    hover = browser.evaluate("document.getElementById('fig-front').data.map(t => (t.hovertext || []).join()).join()")
    assert "w bits:" in hover and "accuracy" in hover


def test_comparison_report_renders(results, report_page, browser):
    ds = [rp.load(n, results_dir=results) for n in ("tpe", "nsga2")]
    rp.write_comparison(ds, results / "compare", png=False)
    shown = report_page(results / "compare" / "report.html")
    assert [f["id"] for f in shown["figures"]] == ["fig-fronts", "fig-hypervolumes"]
    assert browser.evaluate("document.querySelectorAll('#studies-table tbody tr').length") == 2
    names = browser.evaluate("document.getElementById('fig-fronts').data.map(t => t.name)")
    assert {"tpe", "nsga2"} <= set(names)


def test_png_and_svg_exports_next_to_the_report(results, browser):
    d = rp.load("nsga2", results_dir=results)
    result = rp.write_study_report(d, png=True, importances=False)
    assert "skipped" not in result, result.get("skipped")
    names = sorted(p.name for p in result["files"])
    assert names == sorted(f"{f}.{x}" for f in ("front", "hypervolume", "policy", "importance") for x in ("png", "svg"))
    for p in result["files"]:
        head = p.read_bytes()[:200]
        assert head.startswith(PNG_SIGNATURE) if p.suffix == ".png" else b"<svg" in head
    assert 'href="figures/front.png"' in result["html"].read_text(encoding="utf-8")


def _sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_dashboard_serves_its_page_on_localhost_and_stops_cleanly(results, browser, cli_env):
    # started with SIGINT ignored, as a parent process may leave it: Ctrl-C must still stop it (it hung in CI)
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.report.dashboard", "study.name=tpe", f"results_dir={results}", "dashboard.port=0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env, cwd=results.parent,
        preexec_fn=_sigint_ignored,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        match = re.search(r"http://127\.0\.0\.1:(\d+)/dashboard/studies/\d+", "".join(lines))
        assert match, "".join(lines) + proc.stderr.read() if proc.poll() is not None else lines
        port = int(match.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as r:
            assert b'"study_name": "tpe"' in r.read()
        browser.errors.clear()
        browser.open(match.group(0))
        browser.wait_for("document.body.innerText.includes('tpe') && document.body.innerText.includes('size_bytes')")
        assert [e for e in browser.errors if "favicon" not in e] == []
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)  # generous: CI machines can be slow to unwind
        assert proc.returncode == 0, err
        assert "dashboard stopped" in out
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
