"""The service's page (serving/static/) in a headless Chromium, as a person uses it: it names the
serving model, an image chosen with the file input or dropped on the page is classified and drawn as
three bars that agree with the API, a file that is not an image shows the service's message, and a
file over the upload limit is refused by the page itself, naming the limit, without being sent.

Playwright drives the system browser (`playwright install` is never run); the server is a real
`python serving/app.py` process on a two-version registry (champion v2). A screenshot of a classified image goes
to the test's tmp dir and is copied to /tmp/page-screenshots/page.png for a human to look at.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.browser import launched_chromium, require_chromium
from tests.conftest import SHARED_DATASETS
from tests.serving_helpers import encode, scene, serving_process
from tests.synthetic import CLASSES

SCREENSHOTS = Path("/tmp/page-screenshots")

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def service(two_versions, tmp_path_factory):
    """The service on the session's registry (champion v2)."""
    require_chromium()
    from cifarflow.layout import DataLayout
    from cifarflow.registry import store
    from tests.registry_helpers import copy_data_dir

    tmp = tmp_path_factory.mktemp("page")
    registry = DataLayout(copy_data_dir(two_versions, tmp / "data")).registry
    with serving_process(tmp / "data", tmp / "serving.log") as server:
        yield server, store.read_version(registry, "v2"), tmp


@pytest.fixture(scope="module")
def browser(service):
    with launched_chromium() as browser:
        yield browser


@pytest.fixture
def page(service, browser):
    """A fresh page on the service; fails the test if the page has a script error, loads anything from
    elsewhere, or gets an error status other than the 415 the not-an-image test asks for."""
    server, _, _ = service
    context = browser.new_context(viewport={"width": 900, "height": 900})
    page = context.new_page()
    problems: list[str] = []

    def console(message):
        if message.type == "error" and not message.text.startswith("Failed to load resource: the server responded"):
            problems.append(f"console {message.type}: {message.text}")  # HTTP statuses are checked below

    def response(r):
        if r.status >= 400 and (r.request.method, r.url, r.status) != ("POST", f"{server.url}/predict", 415):
            problems.append(f"{r.request.method} {r.url}: {r.status}")

    page.on("console", console)
    page.on("response", response)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("request", lambda r: None if r.url.startswith((server.url, "data:", "blob:")) else problems.append(r.url))
    page.goto(server.url, wait_until="networkidle")
    yield page
    context.close()
    assert not problems, problems


def photo(tmp: Path) -> Path:
    """A 256×256 PNG: a real CIFAR-10 test image (a ship) when ../shared/datasets has the data set,
    else a synthetic scene. Enlarged so the page's preview shows what was sent."""
    from PIL import Image

    path = tmp / "photo.png"
    archive = SHARED_DATASETS / "cifar10-jpeg.tar.gz"
    if archive.is_file():
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.isfile() and member.name.startswith("test/ship/"):
                    image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                    image.resize((256, 256), Image.Resampling.BICUBIC).save(path)
                    return path
    path.write_bytes(encode(scene(256, 256, seed=7)))
    return path


def api_result(server, path: Path) -> dict:
    response = httpx.post(f"{server.url}/predict", files={"file": (path.name, path.read_bytes())}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def shown_result(page) -> tuple[str, list[dict]]:
    """The headline label and, per bar: its label, name, fill width (% of the track) and value text."""
    from playwright.sync_api import expect

    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    expect(page.locator("#label")).not_to_have_text("…", timeout=30_000)
    bars = page.eval_on_selector_all(
        "#bars .bar",
        """bars => bars.map(bar => ({
            label: bar.dataset.label,
            name: bar.querySelector('.name').textContent,
            width: parseFloat(bar.querySelector('.fill').style.width),
            pixels: bar.querySelector('.fill').getBoundingClientRect().width,
            value: bar.querySelector('.value').textContent,
        }))""",
    )
    return page.locator("#label").text_content(), bars


def assert_matches_api(headline: str, bars: list[dict], expected: dict) -> None:
    match = re.fullmatch(r"(\w+) \((\d+\.\d)%\)", headline)
    assert match, headline
    assert match.group(1) in CLASSES and match.group(1) == expected["label"]
    assert float(match.group(2)) == pytest.approx(100 * expected["probability"], abs=0.051)
    assert len(bars) == 3
    assert [b["label"] for b in bars] == [b["name"] for b in bars] == [t["label"] for t in expected["top"]]
    widths = [b["width"] for b in bars]
    assert all(w > 0 for w in widths) and widths == sorted(widths, reverse=True), widths
    assert all(b["pixels"] > 0 for b in bars)  # drawn, not only styled
    for bar, top in zip(bars, expected["top"], strict=True):
        assert bar["width"] == pytest.approx(100 * top["probability"], abs=0.051)
        assert bar["value"] == f"{bar['width']:.1f}%"


def test_page_names_the_model_and_classifies_a_chosen_image(service, page):
    from playwright.sync_api import expect

    server, version, tmp = service
    accuracy = f"{100 * version.accuracy:.1f}%"
    expect(page.locator("#model")).to_have_text(f"Model v2 (classic) · test accuracy {accuracy}")
    expect(page.locator("#classes")).to_have_text(", ".join(CLASSES))
    expect(page.locator("#size")).to_have_text("32×32 pixels")
    expect(page.locator("#result")).to_be_hidden()

    image = photo(tmp)
    page.set_input_files("#file", str(image))
    headline, bars = shown_result(page)
    assert_matches_api(headline, bars, api_result(server, image))
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#preview")).to_be_visible()
    assert page.eval_on_selector("#preview", "img => img.naturalWidth") == 256  # the chosen file, previewed

    shots = tmp / "screenshots"
    shots.mkdir(exist_ok=True)
    page.screenshot(path=shots / "page.png", full_page=True)
    assert (shots / "page.png").stat().st_size > 10_000  # a rendered page, not a blank one
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy2(shots / "page.png", SCREENSHOTS / "page.png")


def test_a_file_that_is_not_an_image_shows_the_service_message(service, page):
    from playwright.sync_api import expect

    _, _, tmp = service
    notes = tmp / "notes.txt"
    notes.write_text("not a picture\n" * 10)
    page.set_input_files("#file", str(notes))
    error = page.locator("#error")
    expect(error).to_be_visible(timeout=30_000)
    expect(error).to_contain_text("notes.txt: not a usable image")
    expect(page.locator("#result")).to_be_hidden()

    page.set_input_files("#file", str(photo(tmp)))  # and the next good image clears the error
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    expect(error).to_be_hidden()


def test_a_file_over_the_upload_limit_is_refused_before_it_is_sent(service, page):
    from playwright.sync_api import expect

    _, _, tmp = service
    expect(page.locator("#hint")).to_contain_text("at most 10 MiB")  # from GET /limits
    huge = tmp / "huge.png"
    huge.write_bytes(encode(scene(64, 64, seed=9)) + b"\0" * (11 * 2**20))
    posted: list[str] = []
    page.on("request", lambda r: posted.append(r.url) if r.method == "POST" else None)
    page.set_input_files("#file", str(huge))
    expect(page.locator("#error")).to_contain_text("huge.png is 11 MiB: over the service's 10 MiB limit")
    expect(page.locator("#result")).to_be_hidden()
    assert posted == []  # refused by the page: no 10 MiB upload for a 413


def test_a_dropped_image_is_classified(service, page):
    from playwright.sync_api import expect

    server, _, tmp = service
    image = tmp / "dropped.png"
    image.write_bytes(encode(scene(120, 90, seed=8)))
    highlighted = page.evaluate(
        """async ([data, name]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/png" }));
            const drop = document.getElementById("drop");
            const fire = (type) => drop.dispatchEvent(
                new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer }));
            fire("dragenter");
            fire("dragover");
            const over = drop.classList.contains("over");
            fire("drop");
            return over;
        }""",
        [base64.b64encode(image.read_bytes()).decode(), image.name],
    )
    assert highlighted  # the drop zone shows it is a target while the file is over it
    headline, bars = shown_result(page)
    assert_matches_api(headline, bars, api_result(server, image))
    expect(page.locator("#drop")).not_to_have_class(re.compile(r"\bover\b"))


def test_the_page_shows_a_champion_of_other_classes_and_size_and_offers_only_its_classes(browser, tmp_path):
    """A champion of 3 classes at 48×48 (not CIFAR-10's): the page lists its classes and size, the result's bars and
    the "No, it is" choices name its classes only, and so do the review page's keys and class filter."""
    from playwright.sync_api import expect

    import serving.app
    from tests.registry_helpers import add_version
    from tests.serving_helpers import serving_in_thread

    tools = ["kettle", "lantern", "anvil"]
    add_version(tmp_path / "data" / "registry", 6, tmp_path / "scratch", label_names=tools, image_size=48)
    app = serving.app.create_app(tmp_path / "data", reviewers=[], loopback_only=True)
    with serving_in_thread(app) as url:
        page = browser.new_page()
        page.goto(url, wait_until="networkidle")
        expect(page.locator("#classes")).to_have_text("kettle, lantern, anvil")
        expect(page.locator("#size")).to_have_text("48×48 pixels")
        image = tmp_path / "photo.png"
        image.write_bytes(encode(scene(120, 90, seed=8)))
        page.set_input_files("#file", str(image))
        expect(page.locator("#feedback")).to_be_visible(timeout=30_000)
        bars = page.eval_on_selector_all("#bars .bar", "bars => bars.map(bar => bar.dataset.label)")
        choices = page.eval_on_selector_all("#choices button", "buttons => buttons.map(b => b.dataset.label)")
        assert sorted(bars) == sorted(tools) and sorted([*choices, bars[0]]) == sorted(tools)
        page.goto(f"{url}/review", wait_until="networkidle")  # the review page's keys and filter: its classes
        expect(page.locator("#legend button")).to_have_text(["0 kettle", "1 lantern", "2 anvil"])
        assert page.eval_on_selector_all("#filter option", "options => options.map(o => o.value)")[-3:] == tools
        page.close()
