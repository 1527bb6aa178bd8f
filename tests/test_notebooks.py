"""Each notebook's .py (the source of truth) and its committed .ipynb hold the same cells.
(nbval runs the .ipynb files themselves: see the Makefile's test target.)"""
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(ROOT.glob("*.py")) + sorted(ROOT.glob("assignments/a[0-9]_*.py"))


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
