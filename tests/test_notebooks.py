"""Each notebook's .py (the source of truth) and its committed .ipynb hold the same cells.
(nbval runs the .ipynb files themselves: see the Makefile's test target.)"""
import ast
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(ROOT.glob("*.py")) + sorted(ROOT.glob("assignments/a[0-9]_*.py"))


def _tree(source: str) -> ast.Module:
    return ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))


def _plot_cells(nb) -> list[int]:
    """Code cells that run ``plt.show()``, or a function of the notebook that does, at their top level."""
    trees = {i: _tree(c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    plotting = {"plt.show"} | {f.name for t in trees.values() for f in ast.walk(t)
                               if isinstance(f, ast.FunctionDef) and "plt.show()" in ast.unparse(f)}
    shows = []
    for i, tree in trees.items():
        top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        if {ast.unparse(c.func) for n in top for c in ast.walk(n) if isinstance(c, ast.Call)} & plotting:
            shows.append(i)
    return shows


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_pair_in_sync(source):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `jupytext --sync {source}` and execute it"
    from_py, committed = jupytext.read(source), nbformat.read(ipynb, as_version=4)
    assert _cells(from_py) == _cells(committed), (
        f"{source.name} and {ipynb.name} differ: after editing the .py run `make notebooks`")


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_executed(source):
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "commit the .ipynb executed, with outputs"


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_plot_cell_shows_a_figure(source):
    """nbval never compares images: a cell that calls plt.show() but has no image output drew
    nothing (e.g. an imported module switched matplotlib's backend)."""
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    blank = [i for i in _plot_cells(nb) if not any("image/png" in o.get("data", {}) for o in nb.cells[i].outputs)]
    assert not blank, f"code cells {blank} call plt.show() but have no image: re-run `make notebooks`"


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_committed_output_carries_a_progress_widget_or_bar(source):
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    for c in nb.cells:
        for o in c.get("outputs", []):
            assert "application/vnd.jupyter.widget-view+json" not in o.get("data", {}), "a stale progress widget"
            assert "it/s]" not in o.get("text", ""), "a progress bar printed into the committed output"
