"""The built course site in a real browser: Debian's Chromium (``/usr/bin/chromium``, which ``make install``
installs) driven by Playwright's Python package (from PyPI; its own browser download is never used, so
nothing but the package registries is needed). The site is served on localhost; every request that
would leave it is blocked and recorded.

    python notebooks/site/browser.py --site site --screenshot notebooks/site/eq11.png

takes the README's picture of notebook 01's eq. 11 section from a built site (``make site``).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import threading
from pathlib import Path

from adjointdpm.tools.cli import Parser, one_line_errors

CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium as root, headless, with none of the background connections a closed network refuses
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
TYPESET = ("() => window.MathJax && MathJax.Hub && MathJax.Hub.queue && MathJax.Hub.queue.pending === 0 "
           "&& MathJax.Hub.queue.running === 0 && document.querySelectorAll('.MathJax_Processing').length === 0")


@contextlib.contextmanager
def serve(site: Path):
    """``site`` over http on a free localhost port; yields its base URL."""
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def browse(site: Path):
    """A headless page on the served site; yields ``(open, outside)``: ``open(path)`` loads a page and waits
    until MathJax has typeset it (where it has MathJax), ``outside`` lists every blocked request."""
    from playwright.sync_api import sync_playwright
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: `make install` installs Debian's chromium package")
    outside: list[str] = []
    with serve(site) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})

        def route(r):
            if r.request.url.startswith((base, "data:", "blob:")):
                return r.continue_()
            outside.append(r.request.url)
            return r.abort()
        page.route("**/*", route)

        def open_page(path: str):
            page.goto(base + path, wait_until="load")
            if page.evaluate("() => !!document.querySelector('script[src*=\"MathJax.js\"]')"):
                page.wait_for_function(TYPESET, timeout=60_000)
            return page
        try:
            yield open_page, outside
        finally:
            browser.close()


def main(argv=None):
    parser = Parser(prog="python notebooks/site/browser.py", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", type=Path, default=Path("site"), help="a built site (make site)")
    parser.add_argument("--screenshot", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    if not (args.site / "notebooks" / "01_toy.html").is_file():
        parser.error(f"argument --site: {args.site} holds no built site (run make site)")
    with one_line_errors(parser), browse(args.site) as (open_page, outside):
        page = open_page("notebooks/01_toy.html")
        top = page.evaluate("() => { const h = [...document.querySelectorAll('h2')].find("
                            "e => e.textContent.includes('The adjoint ODE (eq. 11)'));"
                            " return h.getBoundingClientRect().top + window.scrollY; }")  # in the page, not the view
        page.screenshot(path=str(args.screenshot), full_page=True,
                        clip={"x": 250, "y": top - 10, "width": 800, "height": 640})
    print(f"wrote {args.screenshot}" + (f"; blocked {len(outside)} outside requests" if outside else ""))


if __name__ == "__main__":
    main()
