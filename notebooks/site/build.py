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

from adjointdpm.cli import one_line_errors

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
    (docs / "notebooks").mkdir()
    for name in NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", docs / "notebooks")
    shutil.copytree(ROOT / "results", docs / "results", ignore=shutil.ignore_patterns("samples", "*.pt"))
    return [{"Start here": "index.md"},
            {"Tutorials": [{f"{i + 1:02d} · {name.split('_', 1)[1].replace('_', ' ')}": f"notebooks/{name}.ipynb"}
                           for i, name in enumerate(NOTEBOOKS)]},
            {"The project (README)": "project.md"}, {"For instructors": "instructors.md"}]


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
                  "strict": True, "use_directory_urls": False, "theme": {"name": "mkdocs"},
                  "markdown_extensions": ["tables", "fenced_code", "toc"],
                  "plugins": [{"mkdocs-jupyter": {"execute": False, "include_source": True}}],
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
