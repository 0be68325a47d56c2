"""The documentation site: `mkdocs build --strict` (as `make docs` and CI run it) succeeds with no warning, and
the built site works offline in a real browser: navigation and search, with every request answered by the local
server (a request for anything on the internet fails the test)."""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.browser import launched_chromium, require_chromium

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path("/tmp/docs-screenshots")
pytestmark = pytest.mark.flow  # the build is a fresh process of mkdocs

SECTIONS = ("Tutorial", "How-to guides", "Explanation", "Reference", "Benchmarks")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built the way `make docs` builds it (strict), into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).with_name("mkdocs")
    built = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-6000:]
    warnings = [line for line in built.stderr.splitlines() if re.match(r"\S*\s*(WARNING|ERROR)", line)]
    assert not warnings, "\n".join(warnings)
    return out


@pytest.fixture(scope="module")
def served_site(site) -> Iterator[str]:
    """The built site over HTTP on 127.0.0.1 (search needs HTTP: its index loads in a web worker)."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_every_page_of_the_nav_is_built_and_nothing_loads_from_the_internet(site):
    for page in ("index.html", "tutorial.html", "reference/commands.html", "benchmarks/index.html"):
        assert (site / page).is_file(), page
    loaded = re.compile(r"""(?:<script[^>]+src|<link[^>]+href|<img[^>]+src|@import|url\()\s*=?\s*["']?(?:https?:)?//""")
    offenders = [
        str(path.relative_to(site))
        for path in site.rglob("*")
        if path.suffix in {".html", ".css"} and loaded.search(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, f"pages that load something from the internet: {offenders}"


@pytest.mark.parametrize("how", ["http", "file"])
def test_home_navigation_and_search_work_offline_in_chromium(how, site, request):
    """Served (`make docs-serve`, any static server) or opened from disk (site/index.html): the home page's sections
    and a click through the navigation to a reference page; served, a search that finds the page explaining McNemar's
    test. Every request is answered on this machine."""
    require_chromium()
    home = request.getfixturevalue("served_site") + "/" if how == "http" else (site / "index.html").as_uri()
    SCREENSHOTS.mkdir(exist_ok=True)
    outside: list[str] = []

    def only_local(route) -> None:
        url = urlparse(route.request.url)
        if url.scheme in {"file", "data", "blob"} or url.hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with launched_chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 2000})  # the whole nav in view
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.route("**/*", only_local)

        page.goto(home, wait_until="load")
        nav = page.locator("nav.md-nav--primary")
        for section in SECTIONS:
            assert nav.get_by_text(section, exact=True).first.is_visible(), section
        page.screenshot(path=str(SCREENSHOTS / f"home-{how}.png"))

        nav.get_by_role("link", name="Commands", exact=True).first.click()
        page.wait_for_url("**/reference/commands.html")
        assert page.locator("h1").first.inner_text().rstrip("¶") == "Commands"
        assert page.locator("h2", has_text="flows/cifar_flow.py").count() == 1
        assert "--model" in page.locator("article").inner_text()
        page.screenshot(path=str(SCREENSHOTS / f"reference-commands-{how}.png"))

        if how == "http":  # search loads its index in a web worker, which browsers refuse on file://
            page.locator("label.md-search__icon, .md-search__input").first.click()
            meta = page.locator(".md-search-result__meta")  # "Initializing search" until the worker's index is built
            meta.filter(has_text="Type to start searching").wait_for(timeout=120_000)
            page.locator("input.md-search__input").press_sequentially("McNemar")  # keystrokes, as a person types
            results = page.locator(".md-search-result__item a")
            results.first.wait_for(timeout=30_000)
            targets = [results.nth(i).get_attribute("href") for i in range(results.count())]
            assert any("explanation/promotion" in (href or "") for href in targets), targets
            page.screenshot(path=str(SCREENSHOTS / f"search-{how}.png"))
            results.first.click()
            page.wait_for_load_state("load")
            assert "McNemar" in page.locator("article").inner_text()

    assert not outside, f"requests that left the machine: {outside}"
    if how == "file":  # the search worker's index cannot load from disk: that error only
        errors = [error for error in errors if "search/search_index.js" not in error]
    assert not errors, errors


def test_every_docs_page_the_code_names_is_a_page_of_the_site(site):
    """Error messages and docstrings send readers to `docs/<section>/<page>.md`: each is a page of the site."""
    named = {
        match
        for folder in ("cifarflow", "flows", "serving", "tasks")
        for path in (REPO / folder).rglob("*.py")
        for match in re.findall(r"docs/([\w-]+/[\w-]+)\.md", path.read_text(encoding="utf-8"))
    }
    assert len(named) >= 5, named
    missing = sorted(page for page in named if not (site / f"{page}.html").is_file())
    assert not missing, f"pages named in the code but not in the site: {missing}"


def test_the_readmes_pipeline_picture_is_the_stage_graphs_order():
    """The README (the site's home page) draws the pipeline: the stages of the one declaration, in its order."""
    from cifarflow.orchestration.stages import STAGES

    pictures = re.findall(r"^> \*\*(\w+(?: → \w+)+)\*\*$", (REPO / "README.md").read_text(), re.MULTILINE)
    assert pictures == [" → ".join(STAGES)]
