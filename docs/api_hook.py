"""MkDocs hook: the API reference follows the packages' public names, with no hand-kept list of modules.

A reference page holds a marker instead of mkdocstrings' ``::: identifier`` lines::

    <!-- api: spaces -->

and this hook replaces it, before mkdocstrings reads the page, with one ``::: identifier`` per public unit of
the package, found by reading the source (nothing is imported):

- a package with ``__all__`` in its ``__init__.py`` is one unit, ``::: package``: mkdocstrings then renders
  exactly the names in ``__all__`` (``spaces``, ``objectives``);
- a package without ``__all__`` (``search`` today) is documented module by module: its docstring, then
  ``::: package.module`` for every module whose name does not start with ``_`` (a module's own ``__all__``,
  where it has one, again decides what is shown);
- sub-packages are walked the same way, so a new ``search/report/`` with an ``__all__`` appears by itself;
- a package that gathers plug-ins at import time (``spaces.knobs``, the objectives) lists only some of them in
  its literal ``__all__``: every module of it whose own ``__all__`` names something the package's literal list
  does not is a unit of its own (``::: spaces.knobs.kmeans``), so a knob or objective added as one file is
  documented with no edit here.

``tests/test_docs.py`` discovers the public classes by the same rules, importing the packages, and checks that
each one is on the built page with its docstring.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- api: ([\w.]+) -->$", re.MULTILINE)


def exports(init: Path) -> list[str] | None:
    """The names a module's top-level ``__all__`` lists literally (a ``*others`` entry, filled at import time, is
    skipped), or None where it has none."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            elements = getattr(node.value, "elts", [])
            return [e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return None


def has_all(init: Path) -> bool:
    return exports(init) is not None


def shadowed(package: str) -> list[str]:
    """Names in a package's ``__all__`` imported from a submodule of the same name (``spaces.materialize``, the
    function, from ``spaces/materialize.py``): griffe sees the submodule there, so each gets a unit of its own."""
    folder = ROOT / package.replace(".", "/")
    tree = ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))
    return [f"{package}.{node.module}.{alias.name}" for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
            for alias in node.names if alias.name == node.module and alias.name in (exports(folder / "__init__.py") or [])
            and (folder / f"{node.module}.py").is_file()]


def units(package: str) -> list[str]:
    """The identifiers to hand to mkdocstrings for ``package`` and its sub-packages, in a stable order."""
    folder = ROOT / package.replace(".", "/")
    if not (folder / "__init__.py").is_file():
        raise ValueError(f"api marker: {package!r} is not a package under {ROOT}")
    public = sorted(p for p in folder.iterdir() if not p.name.startswith(("_", ".")))
    subpackages = [p for p in public if p.is_dir() and (p / "__init__.py").is_file()]
    found = [package]
    if has_all(folder / "__init__.py"):
        listed = set(exports(folder / "__init__.py") or [])
        found += shadowed(package)
        found += [f"{package}.{p.stem}" for p in public if p.suffix == ".py"
                  and set(exports(p) or []) - listed]  # plug-ins gathered at import time
    else:
        found += [f"{package}.{p.stem}" for p in public if p.suffix == ".py"]
    for sub in subpackages:
        found += units(f"{package}.{sub.name}")
    return found


def expand(match: re.Match) -> str:
    package, blocks = match.group(1), []
    for ident in units(package):
        options = {}
        if ident == package:
            options["show_root_heading"] = "false"  # the page's own title names it
        init = ROOT / ident.replace(".", "/") / "__init__.py"
        if init.is_file() and not has_all(init):
            options["members"] = "false"  # its docstring only: its modules follow as units of their own
        lines = [f"::: {ident}", *(["    options:"] if options else []), *(f"      {k}: {v}" for k, v in options.items())]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def on_page_markdown(markdown: str, **_) -> str:
    return MARKER.sub(expand, markdown)
