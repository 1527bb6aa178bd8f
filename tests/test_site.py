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
def site(tmp_path_factory, monkeypatch_module):
    def refuse(*args, **kwargs):
        raise OSError("the site build tried to reach the network")
    monkeypatch_module.setattr(socket.socket, "connect", refuse)  # offline: any connection attempt fails the build
    return site_build.build(tmp_path_factory.mktemp("site") / "site")


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


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
