"""`make site`: the course site builds offline from the committed notebooks and the README; every
notebook page exists with its figures, and every internal link and image resolves."""
import importlib.util
import re
import socket
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("site_build", ROOT / "notebooks" / "site" / "build.py")
site_build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(site_build)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    def refuse(*args, **kwargs):
        raise OSError("the site build tried to reach the network")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)  # offline: any connection attempt fails the build
        return site_build.build(tmp_path_factory.mktemp("site") / "site")


def test_every_page_exists_and_notebooks_show_their_figures(site):
    for page in ("index.html", "project.html", "instructors.html"):
        assert (site / page).is_file(), page
    for name in site_build.NOTEBOOKS:
        html = (site / "notebooks" / f"{name}.html").read_text()
        assert html.count("data:image/png;base64") >= 3, name  # the committed figures, embedded
    index = (site / "index.html").read_text()
    assert "arxiv.org/abs/2307.10711" in index and "01_toy" in index
    assert "Model answers" not in (site / "instructors.html").read_text()  # no key on a public page


def test_every_internal_link_and_image_resolves(site):
    broken = []
    for page in site.rglob("*.html"):
        for target in re.findall(r'(?:href|src)="([^"#]+)', page.read_text()):
            url = urlparse(target)
            if url.scheme or url.netloc or target.startswith(("data:", "mailto:")):
                continue
            path = unquote(url.path)
            where = site / path.lstrip("/") if path.startswith("/") else page.parent / path  # "/...": the site's root
            if not where.resolve().exists():
                broken.append(f"{page.relative_to(site)} -> {target}")
    assert not broken, broken[:10]


def _display_math(name: str) -> int:
    """The ``$$ ... $$`` blocks in a tutorial's markdown cells (its jupytext source)."""
    text = (ROOT / "notebooks" / f"{name}.py").read_text()
    markdown = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    return markdown.count("$$") // 2


def test_in_a_real_browser_the_math_is_typeset_every_image_loads_and_nothing_leaves_the_site(site):
    """Debian's Chromium, headless, on the site served from localhost (notebooks/site/browser.py)."""
    spec = importlib.util.spec_from_file_location("site_browser", ROOT / "notebooks" / "site" / "browser.py")
    browser = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(browser)
    with browser.browse(site) as (open_page, outside):
        for path in ["index.html", "assignments.html"] + [f"notebooks/{n}.html" for n in site_build.NOTEBOOKS]:
            page = open_page(path)
            broken = page.evaluate("() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
                                   ".map(i => i.src.slice(0, 80))")
            assert broken == [], (path, broken)
            if path.startswith("notebooks/"):
                name = Path(path).stem
                shown = page.evaluate("() => document.querySelectorAll('.MathJax_Display').length")
                assert shown >= _display_math(name), (path, shown, _display_math(name))
                assert page.evaluate("() => document.querySelectorAll('.MathJax_Error, merror').length") == 0, path
                assert "$$" not in page.evaluate("() => document.querySelector('main, body').innerText"), path
                assert page.evaluate("() => MathJax.OutputJax['HTML-CSS'].fontInUse") == "STIX-Web", path
    assert outside == []
    assert _display_math("01_toy") >= 7  # eq. 11 and its neighbours: the count above is not vacuous


def test_tutorials_link_their_downloads_and_the_assignments_and_the_site_has_search(site):
    for name in site_build.NOTEBOOKS:
        html = (site / "notebooks" / f"{name}.html").read_text()
        for target in (f"{name}.ipynb", f"{name}.py", "../assignments.html"):
            assert f'href="{target}"' in html, (name, target)
        assert (site / "notebooks" / f"{name}.py").is_file() and (site / "notebooks" / f"{name}.ipynb").is_file()
    assert (site / "search" / "search_index.json").is_file()
    page = (site / "assignments.html").read_text()
    assert "Assignment 1" in page and "BEGIN SOLUTION" not in page and "dist/assignments/handout/" in page
