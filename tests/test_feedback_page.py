"""Answering the model in a browser, as a reviewer does, in a headless Chromium against a real
`python serving/app.py` that takes answers from the reviewers of a token file (alice, bob).

On the main page a classified image is corrected, then confirmed (the second answer replaces the
first); a page without the token shows its own token form on the first 401, records nothing for a
wrong token, and records the answer under the reviewer's name once the right one is entered (the
token is asked for once: the next answer, and the review page in the same tab, use it). The review
page shows the unanswered logged images in GET /review/queue's order (least confident first) with
their predicted class and top probability, labels the selected image with a digit key or confirms it
with Enter (it leaves the grid, the selection moves on), and filters by predicted class. What was
recorded is read back from the feedback log (<data dir>/feedback/answers.jsonl).

Playwright drives the system browser (`playwright install` is never run); one service process and
one browser serve the module.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser import launched_chromium, require_chromium
from tests.serving_helpers import ServingProcess, encode, scene, serving_process, wait_until
from tests.synthetic import CLASSES

pytestmark = pytest.mark.server

STATIC = Path(__file__).resolve().parents[1] / "serving" / "static"
SCREENSHOTS = Path("/tmp/page-screenshots")
ALICE = ("alice", "alice-0123456789abcdef")
BOB = ("bob", "bob-fedcba9876543210")


def token_key() -> str:
    """The sessionStorage key the pages keep the token under, as review.js declares it."""
    return re.search(r'const TOKEN_KEY = "([^"]+)"', (STATIC / "review.js").read_text()).group(1)


@dataclass(frozen=True)
class Service:
    server: ServingProcess
    answers_file: Path
    tmp: Path

    @property
    def url(self) -> str:
        return self.server.url

    def answers(self) -> list[dict]:
        """Every answer in the log database (committed before the service says it recorded one)."""
        if not self.answers_file.exists():
            return []
        db = sqlite3.connect(self.answers_file)
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM answers ORDER BY seq")]

    def queue(self, **params) -> dict:
        response = httpx.get(
            f"{self.url}/review/queue", params=params, headers={"Authorization": f"Bearer {ALICE[1]}"}, timeout=30
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def service(two_versions, tmp_path_factory):
    """The service on a copy of the session's registry (champion v2), with a review token file."""
    require_chromium()
    from cifarflow.layout import DataLayout
    from tests.registry_helpers import copy_data_dir

    tmp = tmp_path_factory.mktemp("feedback-page")
    data_dir = copy_data_dir(two_versions, tmp / "data")
    tokens = tmp / "review-tokens"
    tokens.write_text("# name:token\n" + "".join(f"{name}:{token}\n" for name, token in (ALICE, BOB)))
    options = ["--review-token-file", str(tokens)]
    with serving_process(data_dir, tmp / "serving.log", options=options) as server:
        yield Service(server, DataLayout(data_dir).prediction_log, tmp)


@pytest.fixture(scope="module")
def browser(service):
    with launched_chromium() as browser:
        yield browser


@dataclass
class Visit:
    page: Any
    refusals: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status) of each ≥ 400


@pytest.fixture
def visit(service, browser):
    """visit(path, token=None): a fresh tab on the service's `path`, with `token` already in its
    sessionStorage (as if entered before). Its answers ≥ 400 are collected for the test to check; a
    script error, a failed request or one to anywhere else fails the test."""
    contexts, problems = [], []

    def open_tab(path: str, token: str | None = None) -> Visit:
        context = browser.new_context(viewport={"width": 1000, "height": 900})
        contexts.append(context)
        if token:
            key = json.dumps(token_key())
            context.add_init_script(
                f"sessionStorage.getItem({key}) || sessionStorage.setItem({key}, {json.dumps(token)})"
            )
        page = context.new_page()
        opened = Visit(page)

        def console(message):
            if message.type == "error" and not message.text.startswith("Failed to load resource: the server responded"):
                problems.append(f"console: {message.text}")  # statuses are collected in `refusals`

        def response(r):
            if r.status >= 400:
                opened.refusals.append((r.request.method, urlsplit(r.url).path, r.status))

        page.on("console", console)
        page.on("response", response)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.on(
            "request", lambda r: None if r.url.startswith((service.url, "data:", "blob:")) else problems.append(r.url)
        )
        page.goto(service.url + path, wait_until="networkidle")
        return opened

    yield open_tab
    for context in contexts:
        context.close()
    assert not problems, problems


def screenshot(page, tmp: Path, name: str) -> None:
    """The page as shown, in the test's tmp dir and in /tmp/page-screenshots/ for a human to look at."""
    path = tmp / "screenshots" / name
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=path, full_page=True)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, SCREENSHOTS / name)


def image_file(tmp: Path, seed: int) -> Path:
    path = tmp / f"scene-{seed}.png"
    path.write_bytes(encode(scene(96, 96, seed=seed)))
    return path


def classify(page, image: Path) -> dict:
    """Choose `image` on the main page; the /predict answer it got, once the page shows it."""
    from playwright.sync_api import expect

    with page.expect_response(lambda r: urlsplit(r.url).path == "/predict") as answered:
        page.set_input_files("#file", str(image))
    result = answered.value.json()
    assert "label" in result, result
    expect(page.locator("#confirm")).to_have_text(f"Yes, {result['label']}")
    return result


def test_a_correction_then_a_confirmation_are_recorded_from_the_main_page(service, visit):
    from playwright.sync_api import expect

    tab = visit("/", token=ALICE[1])
    page = tab.page
    expect(page.locator("#feedback")).to_be_hidden()  # nothing to answer before a prediction
    expect(page.locator("footer a[href='/review']")).to_be_visible()
    result = classify(page, image_file(service.tmp, seed=11))
    others = [name for name in CLASSES if name != result["label"]]
    expect(page.locator("#choices button")).to_have_text(others)  # one button per other class, label_names order

    page.click(f"#choices button[data-label='{others[0]}']")
    status = page.locator("#feedback-status")
    expect(status).to_have_text(f"Thanks: recorded as {others[0]}")
    expect(page.locator(f"#choices button[data-label='{others[0]}']")).to_have_attribute("aria-pressed", "true")
    screenshot(page, service.tmp, "feedback.png")
    answer = service.answers()[-1]
    assert {k: answer[k] for k in ("prediction_id", "label", "predicted", "reviewer")} == {
        "prediction_id": result["prediction_id"],
        "label": others[0],
        "predicted": result["label"],
        "reviewer": "alice",
    }

    page.click("#confirm")  # changed my mind: the model was right
    expect(status).to_have_text(f"Thanks: answer replaced, now {result['label']}")
    assert (service.answers()[-1]["prediction_id"], service.answers()[-1]["label"]) == (
        result["prediction_id"],
        result["label"],
    )

    classify(page, image_file(service.tmp, seed=12))  # the next image asks afresh
    expect(status).to_have_text("")
    expect(page.locator("#feedback button[aria-pressed='true']")).to_have_count(0)
    expect(page.locator("#token-form")).to_have_count(0)  # the stored token was used: never asked
    assert tab.refusals == []


def test_an_error_of_the_service_is_shown_as_it_says(service, visit):
    """A prediction the service has not logged (the id of a stand-in /predict answer; a file upload's
    body cannot be passed on by Playwright's route.fetch): the service's 404 text is shown under the
    buttons, and nothing is recorded."""
    from playwright.sync_api import expect

    tab = visit("/", token=ALICE[1])
    unknown = "0" * 32

    top = [
        {"label": "cat", "probability": 0.5},
        {"label": "dog", "probability": 0.3},
        {"label": "frog", "probability": 0.1},
    ]
    stand_in = {**top[0], "top": top, "model_version": "v2", "prediction_id": unknown}
    tab.page.route(f"{service.url}/predict", lambda route: route.fulfill(json=stand_in))
    classify(tab.page, image_file(service.tmp, seed=13))
    before = len(service.answers())
    tab.page.click("#confirm")
    status = tab.page.locator("#feedback-status")
    expect(status).to_have_text(f"no logged prediction {unknown}")
    expect(status).to_have_class(re.compile(r"\berror\b"))
    assert len(service.answers()) == before
    assert tab.refusals == [("POST", "/feedback", 404)]


def test_the_page_asks_for_the_token_on_the_first_401_and_keeps_it(service, visit):
    from playwright.sync_api import expect

    tab = visit("/")
    page = tab.page
    result = classify(page, image_file(service.tmp, seed=14))
    expect(page.locator("#token-form")).to_have_count(0)  # not asked before it is needed
    right = next(name for name in CLASSES if name != result["label"])
    page.click(f"#choices button[data-label='{right}']")

    form, message = page.locator("#token-form"), page.locator("#token-message")
    expect(form).to_be_visible()
    expect(message).to_contain_text("reviewer's token")
    assert page.locator("#token").get_attribute("type") == "password"
    page.fill("#token", "not-a-token-of-anyone-here")
    page.press("#token", "Enter")
    expect(message).to_have_text("The review token is not valid: enter it again.")
    expect(page.locator("#token")).to_have_value("")  # a fresh form for the next try
    assert [a for a in service.answers() if a["prediction_id"] == result["prediction_id"]] == []

    screenshot(page, service.tmp, "token-form.png")
    page.fill("#token", BOB[1])
    page.click("#token-form button[type=submit]")
    expect(page.locator("#feedback-status")).to_have_text(f"Thanks: recorded as {right}")
    expect(form).to_have_count(0)
    answer = service.answers()[-1]
    assert (answer["prediction_id"], answer["label"], answer["reviewer"]) == (result["prediction_id"], right, "bob")
    on_disk = b"".join(p.read_bytes() for p in service.answers_file.parent.glob(f"{service.answers_file.name}*"))
    assert BOB[1].encode() not in on_disk  # the name is recorded, never the token (database and its WAL)

    page.click("#confirm")  # asked once: the next answer goes with the kept token
    expect(page.locator("#feedback-status")).to_have_text(f"Thanks: answer replaced, now {result['label']}")
    assert tab.refusals == [("POST", "/feedback", 401)] * 2

    page.goto(f"{service.url}/review", wait_until="networkidle")  # the review page, same tab: same token
    expect(page.locator("#measure")).to_have_text("margin")
    expect(page.locator("#token-form")).to_have_count(0)
    assert tab.refusals == [("POST", "/feedback", 401)] * 2


def post_images(service: Service, count: int) -> list[dict]:
    """`count` different images to /predict; their answers, once the queue has them all (the prediction
    log is written in the background, about every second)."""
    results = []
    with httpx.Client(timeout=60) as client:
        for seed in range(100, 100 + count):
            files = {"file": (f"scene-{seed}.png", encode(scene(40 + seed % 7, 40, seed=seed)))}
            response = client.post(f"{service.url}/predict", files=files)
            assert response.status_code == 200, response.text
            results.append(response.json())
    posted = {r["prediction_id"] for r in results}
    wait_until(
        lambda: posted <= {i["prediction_id"] for i in service.queue(n=500)["items"]},
        30,
        0.3,
        "the posted images queued",
    )
    return results


def shown_cards(page) -> list[dict]:
    from playwright.sync_api import expect

    expect(page.locator("#grid .card").first).to_be_visible()
    page.wait_for_function("[...document.querySelectorAll('#grid .card img')].every(i => i.complete && i.naturalWidth)")
    return page.eval_on_selector_all(
        "#grid .card",
        """cards => cards.map(card => {
            const img = card.querySelector('img');
            return {
                id: card.dataset.id,
                label: card.querySelector('.predicted').textContent,
                probability: card.querySelector('.probability').textContent,
                natural: img.naturalWidth,
                width: img.getBoundingClientRect().width,
                rendering: getComputedStyle(img).imageRendering,
            };
        })""",
    )


def test_the_review_page_labels_the_least_confident_from_the_keyboard(service, visit):
    from playwright.sync_api import expect

    results = post_images(service, 14)
    assert len({r["label"] for r in results}) >= 2, "the images should get different classes for the filter"
    queue = service.queue()
    tab = visit("/review", token=ALICE[1])
    page = tab.page

    page.set_viewport_size({"width": 1000, "height": 500})  # a laptop's window: the grid runs past its bottom
    page.reload(wait_until="networkidle")
    cards = shown_cards(page)
    assert page.evaluate("window.scrollY") == 0  # opens at the top: the heading and key legend in view
    page.set_viewport_size({"width": 1000, "height": 900})
    assert [c["id"] for c in cards] == [i["prediction_id"] for i in queue["items"]]  # the queue's order
    margins = [i["margin"] for i in queue["items"]]
    assert margins == sorted(margins)  # least confident first
    assert [c["label"] for c in cards] == [i["label"] for i in queue["items"]]
    assert [c["probability"] for c in cards] == [f"{100 * i['probability']:.1f}%" for i in queue["items"]]
    assert all(c["natural"] == 32 and c["width"] >= 96 and c["rendering"] == "pixelated" for c in cards), cards[0]
    expect(page.locator("#measure")).to_have_text(queue["measure"])
    expect(page.locator("#unanswered")).to_have_text(str(queue["unanswered"]))
    expect(page.locator("#legend button")).to_have_text([f"{digit} {name}" for digit, name in enumerate(CLASSES)])
    screenshot(page, service.tmp, "review.png")
    ids = [c["id"] for c in cards]
    selected = page.locator("#grid .card.selected")
    expect(selected).to_have_attribute("data-id", ids[0])

    page.keyboard.press("3")  # the selected (least confident) image is a cat
    expect(page.locator(f"#grid .card[data-id='{ids[0]}']")).to_have_count(0)
    expect(page.locator("#status")).to_contain_text(f"Thanks: recorded as {CLASSES[3]}")
    answer = service.answers()[-1]
    assert (answer["prediction_id"], answer["label"], answer["reviewer"]) == (ids[0], CLASSES[3], "alice")
    expect(selected).to_have_attribute("data-id", ids[1])  # the next one gets the selection
    expect(page.locator("#unanswered")).to_have_text(str(queue["unanswered"] - 1))

    page.keyboard.press("ArrowRight")
    expect(selected).to_have_attribute("data-id", ids[2])
    page.keyboard.press("Enter")  # the model is right about this one
    expect(page.locator(f"#grid .card[data-id='{ids[2]}']")).to_have_count(0)
    expect(page.locator("#status")).to_contain_text(f"Thanks: recorded as {cards[2]['label']}")
    answer = service.answers()[-1]
    assert (answer["prediction_id"], answer["label"]) == (ids[2], cards[2]["label"])
    expect(selected).to_have_attribute("data-id", ids[3])
    page.keyboard.press("ArrowLeft")
    expect(selected).to_have_attribute("data-id", ids[1])
    page.keyboard.press("ArrowDown")  # the card right below
    below = page.eval_on_selector_all(
        "#grid .card",
        """(cards, id) => { const s = document.querySelector('#grid .card.selected');
                            const first = cards.find(c => c.dataset.id === id);
                            return [s.offsetLeft === first.offsetLeft, s.offsetTop > first.offsetTop]; }""",
        ids[1],
    )
    assert below == [True, True]
    assert page.locator("#grid .card").count() == len(ids) - 2

    common = Counter(c["label"] for c in cards[3:]).most_common(1)[0][0]
    filtered = service.queue(label=common)
    page.select_option("#filter", common)
    page.wait_for_function(
        "label => [...document.querySelectorAll('#grid .card')].every(c => c.dataset.label === label)", arg=common
    )
    assert [c["id"] for c in shown_cards(page)] == [i["prediction_id"] for i in filtered["items"]]
    assert {c["label"] for c in shown_cards(page)} == {common}
    expect(page.locator("#unanswered")).to_have_text(str(filtered["unanswered"]))
    assert urlsplit(page.url).query == f"label={common}"
    assert tab.refusals == []
