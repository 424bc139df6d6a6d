"""The report screenshots of the docs (docs/img/), taken in headless Chromium from a study's report.html.

    python3 -m uv run python docs/screenshots.py results/fashion-mnist-cnn/report.html docs/img/

writes report-page.png (the top of the page), report-front.png (the Pareto front section) and
report-policy.png (the per-layer policy map) into the folder given, and fails on any JavaScript error.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from search.report.browser import Browser

SECTIONS = {"front": "report-front.png", "policy": "report-policy.png"}


def main(report: Path, out: Path) -> None:
    with Browser(width=1800, height=1100) as b:
        b.open(report.resolve().as_uri())
        b.wait_for("document.querySelectorAll('.js-plotly-plot').length >= 4")
        time.sleep(3)  # let WebGL (3-D view) and the heatmaps finish drawing
        (out / "report-page.png").write_bytes(b.screenshot())
        for section, name in SECTIONS.items():
            box = b.evaluate(
                f"(() => {{ const r = document.getElementById('{section}').getBoundingClientRect();"
                " return {x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height}; })()"
            )
            (out / name).write_bytes(b.screenshot(box))
        if b.errors:
            raise SystemExit(f"JavaScript errors in {report}: {b.errors}")
    print(f"wrote {', '.join(['report-page.png', *SECTIONS.values()])} in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
