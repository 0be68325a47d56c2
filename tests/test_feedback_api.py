"""POST /feedback and the review endpoints against a real uvicorn server in this process, on the
two-version registry: every status the issue names, who may answer, what the feedback log keeps, the
queue's order, and the feedback log rewritten under a running service or written by several processes
at once. The page and the review grid are driven in Chromium by tests/test_feedback_page.py."""

from __future__ import annotations

import io
import multiprocessing
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.registry_helpers import copy_data_dir
from tests.serving_helpers import app_routes, encode, scene, serving_in_thread

pytestmark = pytest.mark.server  # a real uvicorn server and the session's registry

TOKEN = "alice-secret-token-0123456789"
OTHER = "bob-secret-token-9876543210xyz"


@pytest.fixture(scope="module")
def data_dir(two_versions, tmp_path_factory):
    return copy_data_dir(two_versions, tmp_path_factory.mktemp("feedback-api") / "data")


@pytest.fixture(scope="module")
def service(data_dir):
    """The service with two reviewers (alice, bob) in a token file beside the data dir (--review-token-file)."""
    import serving.app

    tokens = data_dir.parent / "review-tokens"
    tokens.write_text(f"alice:{TOKEN}\nbob:{OTHER}\n")
    app = serving.app.create_app(data_dir, reviewers=[], loopback_only=True, review_token_file=tokens)
    with serving_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def predict(client: httpx.Client, seed: int) -> dict:
    response = client.post("/predict", files={"file": (f"{seed}.png", encode(scene(48, 40, seed=seed)))})
    assert response.status_code == 200, response.text
    return response.json()


def answers_on_disk(data_dir) -> list[dict]:
    from cifarflow.layout import DataLayout

    path = DataLayout(data_dir).prediction_log
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    return [dict(row) for row in db.execute("SELECT * FROM answers ORDER BY seq")]


def test_an_answer_right_after_the_prediction_is_recorded_and_a_second_replaces_it(service, data_dir):
    """The prediction is still in the log writer's queue (flushed each second): the endpoint flushes it.
    The reviewer's name is kept, never the token; a second answer replaces the first, both are kept."""
    prediction = predict(service, 1)
    first = service.post(
        "/feedback", json={"prediction_id": prediction["prediction_id"], "label": "ship"}, headers=bearer()
    )
    assert first.status_code == 200, first.text
    assert {k: first.json()[k] for k in ("prediction_id", "label", "status", "predicted", "reviewer")} == {
        "prediction_id": prediction["prediction_id"],
        "label": "ship",
        "status": "recorded",
        "predicted": prediction["label"],
        "reviewer": "alice",
    }
    second = service.post(
        "/feedback", json={"prediction_id": prediction["prediction_id"], "label": "CAT"}, headers=bearer(OTHER)
    )
    assert second.status_code == 200, second.text
    assert (second.json()["status"], second.json()["label"], second.json()["reviewer"]) == ("replaced", "cat", "bob")
    mine = [a for a in answers_on_disk(data_dir) if a["prediction_id"] == prediction["prediction_id"]]
    assert [(a["label"], a["reviewer"]) for a in mine] == [("ship", "alice"), ("cat", "bob")]
    on_disk = (data_dir / "log" / "predictions.sqlite").read_bytes() + (
        data_dir / "log" / "predictions.sqlite-wal"
    ).read_bytes()
    assert TOKEN.encode() not in on_disk and OTHER.encode() not in on_disk


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({}, 401, "review token is needed"),
        ({"Authorization": "Bearer not-the-token-at-all-0000"}, 401, "not valid"),
        ({"Authorization": f"Basic {TOKEN}"}, 401, "review token is needed"),
        ({"Authorization": f"Bearer {TOKEN[:-1]}"}, 401, "not valid"),  # a prefix of a real token is no token
    ],
)
def test_without_a_right_token_nobody_answers_or_reads_the_queue(service, data_dir, headers, status, says):
    prediction = predict(service, 2)
    before = len(answers_on_disk(data_dir))
    for response in (
        service.post("/feedback", json={"prediction_id": prediction["prediction_id"], "label": "cat"}, headers=headers),
        service.get("/review/queue", headers=headers),
        service.get(f"/review/image/{prediction['prediction_id']}.png", headers=headers),
    ):
        assert response.status_code == status, response.text
        assert says in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert len(answers_on_disk(data_dir)) == before
    junk = service.post("/feedback", content=b"\xff" * 1000, headers=headers | {"Content-Type": "application/json"})
    assert junk.status_code == 401  # the token first: a stranger's body is never parsed or judged


# what anyone may use: they read nothing of the reviewers' and teach the model nothing
PUBLIC = {"/", "/health", "/model", "/limits", "/predict", "/predict/batch", "/review", "/static"}
PUBLIC |= {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
PUBLIC |= {"/v2", "/v2/health/live", "/v2/health/ready"}  # the Open Inference Protocol: /predict's twin
PUBLIC |= {f"/v2/models/{{name}}{at}{end}" for at in ("", "/versions/{version}") for end in ("", "/ready", "/infer")}


def test_every_route_but_the_public_ones_requires_a_reviewer(service, data_dir):
    """Walking the app's routes (not a list of them): each route outside PUBLIC declares
    Depends(require_reviewer) and, asked without a token, answers 401 on the real server, whatever its
    method; so a new route writing answers cannot be added without the dependency."""
    import serving.app
    from serving.access import requires_reviewer

    routes = app_routes(serving.app.create_app(data_dir))
    guarded = [route for route in routes if route.path not in PUBLIC]
    assert {"/feedback", "/review/queue", "/review/image/{prediction_id}.png"} <= {route.path for route in guarded}
    assert [route.path for route in routes if requires_reviewer(route)] == [route.path for route in guarded]
    for route in guarded:
        for method in sorted(route.methods):
            response = service.request(method, route.path.format(prediction_id="0" * 32), json={})
            assert (response.status_code, response.headers.get("www-authenticate")) == (401, "Bearer"), route.path


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"prediction_id": "0" * 32, "label": "cat"}, 404, "no logged prediction " + "0" * 32),
        ({"prediction_id": "KNOWN", "label": "kat"}, 422, "'kat' is not a class: one of airplane"),
        ({"prediction_id": "KNOWN", "label": ""}, 422, "is not a class"),
        ({"prediction_id": "not-an-id", "label": "cat"}, 422, "prediction_id"),
        ({"prediction_id": "KNOWN"}, 422, "label"),
        ({"label": "cat"}, 422, "prediction_id"),
        (None, 422, "the body must be a JSON object"),
        ([], 422, "the body must be a JSON object"),
    ],
)
def test_bad_feedback_gets_its_status_and_records_nothing(service, data_dir, body, status, says):
    if isinstance(body, dict) and body.get("prediction_id") == "KNOWN":
        body = body | {"prediction_id": predict(service, 3)["prediction_id"]}
    before = len(answers_on_disk(data_dir))
    response = service.post("/feedback", json=body, headers=bearer())
    assert response.status_code == status, response.text
    assert says in response.json()["error"]
    assert len(answers_on_disk(data_dir)) == before


def test_the_queue_is_unanswered_predictions_least_confident_first(service):
    """Margin order, answered ones left out, the class filter, and each thumbnail the exact pixels."""
    from cifarflow.feedback.queue import margins

    made = [predict(service, 100 + i) for i in range(12)]
    answered = made[0]["prediction_id"]
    assert (
        service.post("/feedback", json={"prediction_id": answered, "label": "cat"}, headers=bearer()).status_code == 200
    )
    queue = service.get("/review/queue", params={"n": 500}, headers=bearer())
    assert queue.status_code == 200, queue.text
    body = queue.json()
    assert (body["measure"], body["order"]) == ("margin", "least-confident")
    ids = [item["prediction_id"] for item in body["items"]]
    assert answered not in ids
    assert {m["prediction_id"] for m in made[1:]} <= set(ids)
    assert body["unanswered"] == len(ids)
    item_margins = [item["margin"] for item in body["items"]]
    assert item_margins == sorted(item_margins), "not least confident first"
    for item in body["items"][:3]:
        png = service.get(item["thumbnail"], headers=bearer())
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (32, 32)

    from cifarflow.intake.images import convert_image

    pixels = convert_image(encode(scene(48, 40, seed=105)), 32).pixels
    png = service.get(f"/review/image/{made[5]['prediction_id']}.png", headers=bearer())
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB")), pixels)
    top = made[5]["top"]
    expected_margin = top[0]["probability"] - top[1]["probability"]
    listed = next(item for item in body["items"] if item["prediction_id"] == made[5]["prediction_id"])
    assert listed["margin"] == pytest.approx(expected_margin, abs=1e-6)
    assert margins(np.array([[0.5, 0.3, 0.2]]))[0] == pytest.approx(0.2)

    label = body["items"][0]["label"]
    only = service.get("/review/queue", params={"label": label}, headers=bearer()).json()
    assert only["items"] and {item["label"] for item in only["items"]} == {label}
    assert service.get("/review/queue", params={"label": label.upper()}, headers=bearer()).json() == only
    shuffled = service.get("/review/queue", params={"n": 500, "order": "random"}, headers=bearer()).json()
    random_ids = [item["prediction_id"] for item in shuffled["items"]]
    assert shuffled["order"] == "random" and random_ids == sorted(ids)  # by random id: stable between looks
    assert service.get("/review/queue", params={"order": "best"}, headers=bearer()).status_code == 422
    assert service.get("/review/queue", params={"label": "kat"}, headers=bearer()).status_code == 422
    assert service.get("/review/queue", params={"n": 0}, headers=bearer()).status_code == 422
    assert service.get("/review/queue", params={"n": 501}, headers=bearer()).status_code == 422
    assert len(service.get("/review/queue", params={"n": 2}, headers=bearer()).json()["items"]) == 2
    assert service.get(f"/review/image/{'f' * 32}.png", headers=bearer()).status_code == 404


def test_a_token_revoked_or_added_in_the_token_file_counts_from_the_next_request(service, data_dir):
    """The running service reads its token file again when it changes: replaced by mv (alice revoked,
    carol added), then edited in place into something unusable (review refused with 503 naming the file,
    never open), then mended. Before: the tokens were read once, at start."""
    tokens, carol = data_dir.parent / "review-tokens", "carol-secret-token-0123456789"
    before = tokens.read_text()
    try:
        new = tokens.with_name("review-tokens.new")
        new.write_text(f"bob:{OTHER}\ncarol:{carol}\n")
        new.replace(tokens)
        assert service.get("/review/queue", headers=bearer()).status_code == 401
        assert service.get("/review/queue", headers=bearer(carol)).status_code == 200
        tokens.write_text("carol:short\n")
        for response in (service.get("/review/queue", headers=bearer(carol)), service.get("/review/queue")):
            assert response.status_code == 503, response.text
            assert str(tokens) in response.json()["error"] and "at least 16" in response.json()["error"]
    finally:
        tokens.write_text(before)
    assert service.get("/review/queue", headers=bearer()).status_code == 200
    assert service.get("/review/queue", headers=bearer(carol)).status_code == 401


def test_with_no_token_only_a_loopback_only_service_takes_answers(data_dir):
    """No token configured: on 127.0.0.1 alone anyone on the machine answers (reviewer `local`); a
    service reachable from other machines refuses every review endpoint with 403, saying how to set one."""
    import serving.app

    for loopback_only, status in ((True, 200), (False, 403)):
        app = serving.app.create_app(data_dir, reviewers=[], loopback_only=loopback_only)
        with serving_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            prediction = predict(client, 7)
            answer = client.post("/feedback", json={"prediction_id": prediction["prediction_id"], "label": "dog"})
            assert answer.status_code == status, answer.text
            assert client.get("/review/queue").status_code == status
            assert client.get(f"/review/image/{prediction['prediction_id']}.png").status_code == status
            rebound = client.get("/review/queue", headers={"Host": "evil.example"})  # DNS rebinding
            proxied = client.get("/review/queue", headers={"X-Forwarded-For": "203.0.113.9"})
            assert (rebound.status_code, proxied.status_code) == (403, 403)
            if status == 200:
                assert answer.json()["reviewer"] == "local"
            else:
                assert "--review-token-file" in answer.json()["error"]
                garbage = client.post("/feedback", content=b"{", headers={"Content-Type": "application/json"})
                assert garbage.status_code == 403  # refused before the body is looked at
                assert client.post("/predict", files={"file": ("x.png", encode(scene(40, 40)))}).status_code == 200


def test_a_service_without_the_log_says_why_an_id_is_unknown(data_dir):
    import serving.app

    app = serving.app.create_app(data_dir, reviewers=[], loopback_only=True, log_predictions=False)
    with serving_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        prediction = predict(client, 8)
        answer = client.post("/feedback", json={"prediction_id": prediction["prediction_id"], "label": "dog"})
        assert answer.status_code == 404
        assert "keeps no prediction log: --no-log" in answer.json()["error"]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("alice:short\n", "at least 16"),
        ("just-a-token-with-no-name-0123\n", "expected `name:token`"),
        ("al ice:0123456789abcdefgh\n", "reviewer name"),
        ("# only a comment\n", "has no `name:token` entry"),
    ],
)
def test_an_unusable_token_file_stops_the_service_before_it_serves(tmp_path, capsys, content, says):
    from serving.app import main

    token_file = tmp_path / "tokens"
    token_file.write_text(content)
    assert main(["--data-dir", str(tmp_path / "data"), "--review-token-file", str(token_file)]) == 2
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("error: ") and says in last


def test_a_body_that_is_not_json_is_400_saying_what_to_send(service, data_dir):
    before = len(answers_on_disk(data_dir))
    for content, kind, status in [
        (b"\xffnot json", "application/json", 400),
        (b"prediction_id=x&label=cat", "application/x-www-form-urlencoded", 422),  # parsed, but not an object
    ]:
        response = service.post("/feedback", content=content, headers=bearer() | {"Content-Type": kind})
        assert response.status_code == status, response.text
        assert "prediction_id" in response.json()["error"]
    assert len(answers_on_disk(data_dir)) == before


def answer(client: httpx.Client, prediction_id: str, label: str = "cat") -> str:
    """POST /feedback as alice; the answer's status (`recorded`, `replaced`)."""
    response = client.post("/feedback", json={"prediction_id": prediction_id, "label": label}, headers=bearer())
    assert response.status_code == 200, response.text
    return response.json()["status"]


def queued(client: httpx.Client) -> set[str]:
    response = client.get("/review/queue", params={"n": 500}, headers=bearer())
    assert response.status_code == 200, response.text
    return {item["prediction_id"] for item in response.json()["items"]}


WITHDRAW = (  # the command of docs/how-to/review.md
    "import sqlite3; db = sqlite3.connect('data/log/predictions.sqlite'); "
    "db.execute(\"DELETE FROM answers WHERE reviewer = 'mallory'\"); db.commit()"
)


def test_answers_withdrawn_with_sql_are_seen_by_the_running_service(service, data_dir):
    """An operator withdraws a poisoned answer with the documented command while the service runs: the image is
    back in the queue, and answering it again is `recorded`; an answer left in place still says `replaced`."""
    from cifarflow.layout import DataLayout

    withdrawn, kept = predict(service, 40)["prediction_id"], predict(service, 41)["prediction_id"]
    assert (answer(service, withdrawn), answer(service, kept)) == ("recorded", "recorded")
    assert not {withdrawn, kept} & queued(service)
    command = WITHDRAW.replace("data/log/predictions.sqlite", str(DataLayout(data_dir).prediction_log))
    subprocess.run(
        [sys.executable, "-c", command.replace("reviewer = 'mallory'", f"prediction_id = '{withdrawn}'")], check=True
    )
    in_queue = queued(service)
    assert withdrawn in in_queue and kept not in in_queue
    assert (answer(service, withdrawn), answer(service, kept)) == ("recorded", "replaced")
    assert withdrawn not in queued(service)


ANSWERS, ROUNDS = 24, 3


def test_of_concurrent_answers_to_one_prediction_exactly_one_is_recorded(service, data_dir):
    """24 answers to one prediction in flight at once: one is `recorded`, 23 `replaced`."""
    prediction_id = predict(service, 42)["prediction_id"]
    with ThreadPoolExecutor(ANSWERS) as pool:
        statuses = [pool.submit(answer, service, prediction_id) for _ in range(ANSWERS)]
    assert Counter(status.result() for status in statuses) == {"recorded": 1, "replaced": ANSWERS - 1}


def answer_rounds(path: Path, rounds: int, go, results) -> None:
    """Half of each round's answers to the round's prediction, in threads, through one long-lived AnswerBook
    (as a service holds); (round, replaced) put on `results`."""
    from cifarflow.feedback.answers import AnswerBook, new_answer

    book = AnswerBook(path)

    def one(round_: int) -> None:
        results.put((round_, book.record(new_answer(f"{round_:032x}", "cat", "dog", "v1", "alice"))))

    for round_ in range(rounds):
        go.wait(60)
        threads = [threading.Thread(target=one, args=(round_,)) for _ in range(ANSWERS // 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)


def test_of_concurrent_answers_from_two_processes_exactly_one_is_recorded(tmp_path):
    """Two processes on one feedback log (two services on one data dir), 24 answers to one prediction in
    flight at once, 3 rounds: each round one `recorded`, 23 `replaced`, every line kept whole."""
    path = tmp_path / "log" / "predictions.sqlite"
    spawn = multiprocessing.get_context("spawn")
    go, results = spawn.Barrier(3), spawn.Queue()
    processes = [spawn.Process(target=answer_rounds, args=(path, ROUNDS, go, results)) for _ in range(2)]
    for process in processes:
        process.start()
    got = []
    for _ in range(ROUNDS):
        go.wait(60)
        got += [results.get(timeout=60) for _ in range(ANSWERS)]
    for process in processes:
        process.join(60)
    recorded = Counter(round_ for round_, replaced in got if not replaced)
    assert [recorded[r] for r in range(ROUNDS)] == [1] * ROUNDS, f"`recorded` per round: {recorded}"
    kept = sqlite3.connect(path).execute("SELECT prediction_id, COUNT(*) FROM answers GROUP BY prediction_id")
    assert dict(kept.fetchall()) == {f"{r:032x}": ANSWERS for r in range(ROUNDS)}
