"""Build the course site: the README's "Start here" as the home page, the three executed tutorial
notebooks (rendered as committed, never re-executed), the README, and the instructors' page.

    python notebooks/site/build.py [--out site]       (or: make site)

mkdocs with mkdocs-jupyter, offline: nothing is fetched at build time. The pages are assembled in
a temporary folder that mirrors the repository's layout (the README, notebooks/, results/), so every
relative link and image in the README resolves on the site as it does on the repository; mkdocs runs
in strict mode, so a link to a missing page fails the build.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from adjointdpm.tools.cli import one_line_errors

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ("01_toy", "02_cifar", "03_stable_diffusion")


def section(markdown: str, heading: str) -> str:
    """The README section under ``## heading`` (up to the next ``## ``), heading included."""
    found = re.search(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", markdown, flags=re.M | re.S)
    if not found:
        raise ValueError(f"README.md has no section '## {heading}'")
    return found.group(0)


def assemble(docs: Path) -> dict:
    """Write the pages into ``docs``; returns mkdocs' navigation."""
    readme = (ROOT / "README.md").read_text()
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "project.md").write_text(readme)  # mkdocs would take a README.md for the home page
    (docs / "index.md").write_text("# adjointdpm: the course\n\n" + section(readme, "Start here")
                                   + "\nThe whole project: [README](project.md). Instructors: [the course page]"
                                   "(instructors.md).\n")
    (docs / "instructors.md").write_text(section(readme, "For instructors"))
    (docs / "assignments.md").write_text(assignments_page())
    (docs / "notebooks").mkdir()
    for name in NOTEBOOKS:
        with_links(ROOT / "notebooks" / f"{name}.ipynb", docs / "notebooks" / f"{name}.ipynb")
        shutil.copy(ROOT / "notebooks" / f"{name}.py", docs / "notebooks")  # a static file: the plugin reads .ipynb only
    (docs / "notebooks" / "site").mkdir()
    for picture in (ROOT / "notebooks" / "site").glob("*.png"):  # the README's pictures of the site itself
        shutil.copy(picture, docs / "notebooks" / "site")
    shutil.copytree(mathjax_folder(), docs / MATHJAX)
    (docs / MATHJAX / "config" / "site.js").write_text(MATHJAX_FONTS)
    shutil.copytree(ROOT / "results", docs / "results", ignore=shutil.ignore_patterns("samples", "*.pt"))
    return [{"Start here": "index.md"},
            {"Tutorials": [{f"{i + 1:02d} · {name.split('_', 1)[1].replace('_', ' ')}": f"notebooks/{name}.ipynb"}
                           for i, name in enumerate(NOTEBOOKS)]},
            {"Assignments": "assignments.md"}, {"The project (README)": "project.md"},
            {"For instructors": "instructors.md"}]


MATHJAX = "assets/mathjax"  # MathJax 2.7 from the jupyter-server-mathjax wheel, served with the site
# That wheel ships the STIX web fonts only: without this, MathJax looks for its TeX fonts, falls back to
# the system's, and draws no stretchy brackets (eq. 11's matrices)
MATHJAX_FONTS = """MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web",
                                   imageFont: null}});
MathJax.Ajax.loadComplete("[MathJax]/config/site.js");
"""


def mathjax_folder() -> Path:
    """MathJax's files as the jupyter-server-mathjax package installs them (nothing is fetched). Found, not
    imported: importing it starts its Jupyter server extension, whose server is not installed (Makefile)."""
    import importlib.util
    spec = importlib.util.find_spec("jupyter_server_mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the site needs MathJax from the jupyter-server-mathjax wheel: run `make install`")
    return Path(spec.submodule_search_locations[0]) / "static"


def with_links(source: Path, dest: Path) -> None:
    """The executed notebook as committed, with a first cell that links its two downloads and the assignments."""
    import nbformat
    nb = nbformat.read(source, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(
        f"Download this tutorial: [{source.stem}.ipynb]({source.stem}.ipynb) (executed, with its figures) or "
        f"[{source.stem}.py]({source.stem}.py) (jupytext, the source). Graded exercises built on it: "
        "[the assignments](../assignments.html)."))
    nbformat.write(nb, dest)


def assignments_page() -> str:
    """The assignments' titles (each master's first heading) and how a student gets the hand-out; no question
    text, answer or test leaves the masters."""
    titles = []
    for master in sorted((ROOT / "notebooks" / "assignments").glob("a[0-9]_*.py")):
        heading = re.search(r"^# # (Assignment .+)$", master.read_text(), flags=re.M)
        titles.append(f"- **{master.stem}**: {heading.group(1) if heading else master.stem}")
    return ("# Assignments\n\nGraded exercises on the tutorials, one notebook each, graded by otter-grader with "
            "hidden tests:\n\n" + "\n".join(titles) + "\n\nYour instructor hands out the folder "
            "`dist/assignments/handout/` (built by `make assignments`): the notebooks, the library's wheel and "
            "`INSTRUCTIONS.md`, which says how to install, answer and submit. Work through the matching tutorial "
            "first: [01](notebooks/01_toy.ipynb), [02](notebooks/02_cifar.ipynb), "
            "[03](notebooks/03_stable_diffusion.ipynb).\n")


def build(out: Path) -> Path:
    """Assemble the pages and run ``mkdocs build --strict`` into ``out``."""
    import yaml
    from mkdocs.commands.build import build as mkdocs_build
    from mkdocs.config import load_config
    out = out.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        nav = assemble(docs)
        config = {"site_name": "adjointdpm course", "docs_dir": str(docs), "site_dir": str(out), "nav": nav,
                  "strict": True, "use_directory_urls": False,
                  "theme": {"name": "mkdocs", "highlightjs": False},  # its highlight.js comes from a CDN
                  "markdown_extensions": ["tables", "fenced_code", "toc"],
                  "plugins": ["search", {"mkdocs-jupyter": {
                      "execute": False, "include_source": True, "include": ["*.ipynb"],
                      # every notebook page is one folder down: MathJax from the site itself, never a CDN
                      "custom_mathjax_url": f"../{MATHJAX}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe,site"}}],
                  "validation": {"links": {"not_found": "warn", "anchors": "ignore", "unrecognized_links": "warn"}}}
        (Path(tmp) / "mkdocs.yml").write_text(yaml.safe_dump(config))
        if out.exists():
            shutil.rmtree(out)
        mkdocs_build(load_config(str(Path(tmp) / "mkdocs.yml")))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python notebooks/site/build.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("site"), help="where the static site goes (default site/)")
    args = parser.parse_args(argv)
    with one_line_errors(parser):
        try:
            out = build(args.out)
        except Exception as err:  # mkdocs' strict mode reports every warning as one abort
            sys.exit(f"python notebooks/site/build.py: error: {type(err).__name__}: {err}")
    print(f"site in {out}/ (open {out / 'index.html'})")


if __name__ == "__main__":
    main()
