"""The architecture holds by rule: the layers of ``pyproject.toml``'s import-linter contracts (``lint-imports``,
which ``make test`` runs), no import cycle among the project's modules (imports inside functions counted), and
folders and modules a reader can hold in their head."""
from __future__ import annotations

import graphlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "spaces", "objectives")
TREES = (*PACKAGES, "tests", "benchmarks")
MAX_MODULES, MAX_LINES = 12, 450


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the packages under ``root`` (their copy, not the installed ones), with the project's
    contracts."""
    script = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(script), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_no_import_cycle_among_the_projects_modules():
    """Every import counts, inside a function too; a package's ``__init__`` importing its own modules (to re-export
    them) is the one edge left out, as it is no dependency of the package on anything outside it."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if not i.startswith(f"{m}.")}
             for m in graph.modules}
    try:
        order = list(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")
    assert set(order) >= set(graph.modules)


@pytest.mark.parametrize("module, line, broken", [
    # a cost model reaching up into the search (inside a function: it counts all the same)
    ("objectives/size.py", "def _up():\n    import search.app\n", "search over spaces and objectives"),
    # the results layer importing the search loop above it
    ("search/results/front.py", "def _up():\n    from search.loop import study\n", "search: entry points"),
    # pick and report are independent of each other
    ("search/pick/card.py", "from search.report import analysis\n", "search: entry points"),
])
def test_a_forbidden_import_fails_lint_imports(tmp_path, module, line, broken):
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert lint_imports(tmp_path).returncode == 0  # the copy as it is keeps every contract
    path = tmp_path / module
    path.write_text(path.read_text() + "\n\n" + line)
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert f"{broken}" in done.stdout and "BROKEN" in done.stdout


def _python_files():
    for tree in TREES:
        yield from (p for p in (ROOT / tree).rglob("*.py") if "__pycache__" not in p.parts)


def test_no_folder_holds_more_than_twelve_modules_of_its_own():
    folders: dict[Path, int] = {}
    for path in _python_files():
        if path.name != "__init__.py":
            folders[path.parent] = folders.get(path.parent, 0) + 1
    crowded = {str(f.relative_to(ROOT)): n for f, n in folders.items() if n > MAX_MODULES}
    assert not crowded, f"split these folders by concern (at most {MAX_MODULES} modules each): {crowded}"


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in _python_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules by concern (at most {MAX_LINES} lines each): {long}"


def test_the_architecture_page_has_a_paragraph_for_each_layer_of_search():
    """``docs/architecture/index.md`` draws the contracts (``<!-- layers -->``, expanded from ``pyproject.toml`` by
    ``docs/layers_hook.py``) and says, layer by layer, what each owns: a layer added to the contract needs its
    paragraph."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    page = (ROOT / "docs" / "architecture" / "index.md").read_text()
    assert "<!-- layers -->" in page
    search = next(c for c in contracts if c["id"] == "search")
    names = [n.strip() for layer in search["layers"] for n in layer.split("|")]
    missing = [n for n in names if f"**`{n}`**" not in page]
    assert not missing, f"docs/architecture/index.md: no paragraph for {missing}"
