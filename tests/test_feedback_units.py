"""The feedback library without a server: who may answer (tokens), the answers (kept across processes and
kills), the uncertainty measures and the queue's order, and the export's plan (conflicts, lost)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cifarflow.errors import PipelineInputError
from cifarflow.feedback.answers import AnswerBook, new_answer
from cifarflow.feedback.corrections import ExportPlan, plan_export, screening_verdicts, unfinished_exports
from cifarflow.feedback.queue import unanswered, uncertainty
from cifarflow.journal import unfinished
from cifarflow.monitoring.log import PredictionLog
from serving.access import AccessDenied, ReviewAccess, load_reviewers, parse_reviewers
from tests.conftest import REPO_ROOT

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-0123456789abcdefgh"


# --- access ----------------------------------------------------------------------------------------------


def test_each_token_names_its_reviewer_and_nothing_else_gets_in():
    access = ReviewAccess(parse_reviewers(f"# reviewers\nalice:{ALICE}\n\nbob:{BOB}\n", "tokens"), loopback_only=False)
    assert access.reviewer(f"Bearer {ALICE}") == "alice"
    assert access.reviewer(f"bearer  {BOB} ") == "bob"
    for header, status in [
        (None, 401),
        ("", 401),
        (f"Basic {ALICE}", 401),
        ("Bearer ", 401),
        (f"Bearer {ALICE[:-1]}", 401),
        (f"Bearer {ALICE}x", 401),
        (f"Bearer {ALICE.upper()}", 401),
        ("Bearer alice", 401),
    ]:
        with pytest.raises(AccessDenied) as denied:
            access.reviewer(header)
        assert denied.value.status == status
    assert ALICE not in repr(access.reviewers)  # never the secret in a log line or traceback


def test_without_tokens_only_a_loopback_service_takes_answers_from_this_machine():
    local = ReviewAccess([], loopback_only=True)
    for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:80", "[::1]:8000"):
        assert local.reviewer(None, host) == "local"
    for host, forwarded in [
        ("evil.example", False),  # a page that re-points its own name at 127.0.0.1 (DNS rebinding)
        ("evil.example:8000", False),
        ("127.0.0.1.evil.example", False),
        (None, False),
        ("127.0.0.1:8000", True),  # a proxy in front: the request may come from anywhere
    ]:
        with pytest.raises(AccessDenied) as denied:
            local.reviewer(None, host, forwarded)
        assert denied.value.status == 403 and "only from this machine" in str(denied.value)
    with pytest.raises(AccessDenied) as denied:
        ReviewAccess([], loopback_only=False).reviewer(f"Bearer {ALICE}", "127.0.0.1:8000")
    assert denied.value.status == 403 and "--review-token-file" in str(denied.value)


def test_only_a_loopback_address_counts_as_this_machine_only():
    from serving.access import listens_on_loopback

    assert [listens_on_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost")] == [True] * 4
    assert [listens_on_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org")] == [False] * 4


def test_every_token_is_compared_whichever_matches(monkeypatch):
    import serving.access as access

    calls = []
    real = access.hmac.compare_digest
    monkeypatch.setattr(access.hmac, "compare_digest", lambda a, b: calls.append(b) or real(a, b))
    rule = ReviewAccess(parse_reviewers(f"alice:{ALICE}\nbob:{BOB}\ncarol:{'c' * 20}", "tokens"), True)
    for header in (f"Bearer {ALICE}", f"Bearer {BOB}", "Bearer wrong-token-0000000000"):
        calls.clear()
        try:
            rule.reviewer(header, "127.0.0.1")
        except AccessDenied:
            pass
        assert len(calls) == 3, header  # no early exit on a match


def test_tokens_come_from_the_file_and_the_environment_and_bad_ones_are_refused(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"alice:{ALICE}\n")
    reviewers = load_reviewers(path, {"CIFARFLOW_REVIEW_TOKEN": f"bob:{BOB},carol:{'c' * 16}"})
    assert [r.name for r in reviewers] == ["alice", "bob", "carol"]
    assert load_reviewers(None, {}) == []
    for text, says in [
        ("alice:short", "at least 16"),
        (ALICE, "expected `name:token`"),
        (f"a b:{ALICE}", "reviewer name"),
        (f"alice:{ALICE}\nalice:{BOB}", "given twice"),
        (f"alice:{ALICE}\nbob:{ALICE}", "token is given twice"),
        (f"alice:{ALICE} # the lead", "printable ASCII with no spaces"),
        ("alice:tékentékentékentéken", "printable ASCII"),  # a header could never carry it
    ]:
        path.write_text(text)
        with pytest.raises(PipelineInputError, match=says):
            load_reviewers(path, {})
    with pytest.raises(PipelineInputError, match="given twice"):  # the same name in the file and the variable
        path.write_text(f"alice:{ALICE}\n")
        load_reviewers(path, {"CIFARFLOW_REVIEW_TOKEN": f"alice:{BOB}"})
    for unusable in (",,,", f"#alice:{ALICE}"):  # set but empty must not mean "no tokens"
        with pytest.raises(PipelineInputError, match="no `name:token` entry"):
            load_reviewers(None, {"CIFARFLOW_REVIEW_TOKEN": unusable})
    path.write_text(f"# reviewers: alice, bob\nalice:{ALICE}\n\n")  # a comment may hold commas
    assert [r.name for r in load_reviewers(path, {})] == ["alice"]
    path.write_text(f"# reviewers\nalice:{ALICE}\nbob:short\n")
    with pytest.raises(PipelineInputError, match="line 3"):
        load_reviewers(path, {})
    path.write_bytes(b"\xef\xbb\xbf" + f"alice:{ALICE}\r\n".encode())  # a BOM and CRLF from a Windows editor
    assert [r.name for r in load_reviewers(path, {})] == ["alice"]
    with pytest.raises(PipelineInputError, match="cannot read"):
        load_reviewers(tmp_path / "missing", {})


# --- the answers ---------------------------------------------------------------------------------------------


def test_the_last_answer_counts_and_every_answer_is_kept(tmp_path):
    book = AnswerBook(tmp_path / "log.sqlite")
    assert book.refresh() == {}
    assert [book.record(new_answer("a" * 32, label, "cat", "v1", "alice")) for label in ("cat", "dog", "ship")] == [
        False,
        True,
        True,
    ]
    book.record(new_answer("b" * 32, "cat", "cat", "v1", "bob"))
    latest = book.refresh()
    assert {pid: a.label for pid, a in latest.items()} == {"a" * 32: "ship", "b" * 32: "cat"}
    assert (latest["a" * 32].predicted, latest["b" * 32].predicted) == ("cat", "cat")
    assert sqlite3.connect(tmp_path / "log.sqlite").execute("SELECT COUNT(*) FROM answers").fetchone() == (4,)


ANSWERER = """
import sys
from cifarflow.feedback.answers import AnswerBook, new_answer
book = AnswerBook(sys.argv[1])
for i in range(40):
    book.record(new_answer(f"{sys.argv[2]}{i:030d}", "cat", "dog", "v1", "w"))
    print(i, flush=True)
    if i == 20:
        sys.stdin.readline()  # killed here
"""


def test_answers_from_processes_at_once_are_all_kept_and_a_kill_loses_none_acknowledged(tmp_path):
    """Two processes answer at once; one is SIGKILLed after its 21st answer: each answer a process was told
    was recorded is there, whole."""
    path = tmp_path / "log.sqlite"
    steady = subprocess.Popen([sys.executable, "-c", ANSWERER, str(path), "01"], cwd=REPO_ROOT, stdout=subprocess.PIPE)
    killed = subprocess.Popen(
        [sys.executable, "-c", ANSWERER, str(path), "02"], cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    acknowledged = [killed.stdout.readline() for _ in range(21)]
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert steady.wait(60) == 0 and acknowledged[-1].strip() == b"20"
    answers = AnswerBook(path).refresh()
    assert {pid for pid in answers if pid.startswith("01")} == {f"01{i:030d}" for i in range(40)}
    assert {pid for pid in answers if pid.startswith("02")} == {f"02{i:030d}" for i in range(21)}
    assert {a.label for a in answers.values()} == {"cat"}


# --- uncertainty and the queue -------------------------------------------------------------------------------


def test_the_three_measures_on_known_rows():
    p = np.array([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3]])
    assert uncertainty(p, "margin") == pytest.approx([0.8, 0.15, 1.0])
    assert uncertainty(p, "top") == pytest.approx([0.5, 0.1, 2 / 3])
    assert uncertainty(p, "entropy")[2] == pytest.approx(np.log(3))
    with pytest.raises(ValueError, match="unknown uncertainty measure"):
        uncertainty(p, "vibes")
    with pytest.raises(ValueError, match="must be"):
        uncertainty(np.ones(3), "top")


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, (20, 10), elements=st.floats(0.001, 1.0)), st.sampled_from(["margin", "top", "entropy"]))
def test_every_measure_is_bounded_and_highest_for_the_flat_row(raw, measure):
    p = np.vstack([raw / raw.sum(axis=1, keepdims=True), np.full((1, 10), 0.1)])
    scores = uncertainty(p, measure)
    assert np.all(scores >= -1e-12) and np.all(scores <= scores[-1] + 1e-9)  # nothing is less confident than flat
    assert np.all(uncertainty(p, "top") <= 1 - 1 / 10 + 1e-9)


def test_the_queue_is_unanswered_rows_of_the_label_set_least_confident_first(tmp_path):
    path = tmp_path / "log.sqlite"
    p = np.zeros((5, 10), np.float32)
    p[0, [3, 5]] = [0.55, 0.45]  # cat, close call
    p[1, [3, 5]] = [0.95, 0.05]  # cat, sure
    p[2, [8, 0]] = [0.5, 0.5]  # ship, a coin toss
    p[3, [8, 0]] = [0.7, 0.3]  # ship
    p[4, [8, 0]] = [0.5, 0.5]  # ship, a coin toss logged later: ties keep log order
    ids = ["c" * 32, "a" * 32, "e" * 32, "d" * 32, "b" * 32]
    eleven = np.full((1, 11), 1 / 11, np.float32)  # another label set: never in this queue
    with PredictionLog(path) as prediction_log:
        prediction_log.append(ids, "service", "v1", p, np.zeros((5, 32, 32, 3), np.uint8))
        prediction_log.append(["f" * 32], "service", "v9", eleven, np.zeros((1, 32, 32, 3), np.uint8))
    queued = lambda **kw: [row.prediction_id[0] for row in unanswered(path, 10, 10, **kw)[1]]  # noqa: E731
    assert queued() == ["e", "b", "c", "d", "a"]
    AnswerBook(path).record(new_answer("e" * 32, "ship", "ship", "v1", "alice"))
    assert unanswered(path, 10, 2)[0] == 4 and queued() == ["b", "c", "d", "a"]
    assert queued(label=3) == ["c", "a"] and queued(order="random") == ["a", "b", "c", "d"]  # random: by id
    (row,) = unanswered(path, 10, 1)[1]
    assert np.array_equal(row.probabilities, p[4]) and row.model_version == "v1"
    with pytest.raises(ValueError, match="unknown order"):
        unanswered(path, 10, 1, order="best")


# --- the export's plan ---------------------------------------------------------------------------------------------


def latest(answers: list) -> dict:
    """prediction_id → its last answer."""
    return {answer.prediction_id: answer for answer in answers}


def test_one_image_with_two_labels_is_held_and_agreeing_answers_are_ready():
    image, other = np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 7, np.uint8)
    answers = [
        new_answer("a" * 32, "cat", "dog", "v1", "alice"),
        new_answer("b" * 32, "dog", "dog", "v1", "bob"),  # the same image as a, another class
        new_answer("c" * 32, "ship", "dog", "v1", "bob"),
        new_answer("d" * 32, "ship", "dog", "v1", "bob"),  # not in the log any more
    ]
    current = latest(answers)
    plan = plan_export(current, {}, {"a" * 32: image, "b" * 32: image, "c" * 32: other})
    assert [r.answer.prediction_id for r in plan.ready] == ["c" * 32]
    (held,) = plan.held
    assert held["labels"] == ["cat", "dog"] and len(held["answers"]) == 2
    assert [a.prediction_id for a in plan.lost] == ["d" * 32]


def test_a_new_answer_disagreeing_with_an_exported_one_about_the_same_image_is_held():
    from cifarflow.data.shards import pixel_digest

    image = np.zeros((32, 32, 3), np.uint8)
    done = new_answer("a" * 32, "cat", "dog", "v1", "alice")
    exported = {
        "a" * 32: {"answer_id": done.answer_id, "label": "cat", "verdict": "added", "pixel_sha256": pixel_digest(image)}
    }
    current = latest([done, new_answer("b" * 32, "dog", "dog", "v1", "bob")])
    plan = plan_export(current, exported, {"b" * 32: image})
    assert plan.ready == [] and plan.held[0]["labels"] == ["cat", "dog"]
    agreeing = latest([done, new_answer("b" * 32, "cat", "dog", "v1", "bob")])
    assert [r.answer.prediction_id for r in plan_export(agreeing, exported, {"b" * 32: image}).ready] == ["b" * 32]


def test_verdicts_come_from_the_screening_summary_by_file_name():
    plan = plan_export(
        latest([new_answer(c * 32, "cat", "dog", "v1", "alice") for c in "abc"]),
        {},
        {c * 32: np.full((32, 32, 3), i, np.uint8) for i, c in enumerate("abc")},
    )
    summary = {
        "batch_id": "batch-1",
        "rejected": [{"path": f"/x/inbox/cat/{'a' * 32}.png", "reason": "test-set leak: an exact copy"}],
        "duplicate_files": [{"path": f"/x/inbox/cat/{'b' * 32}.png", "of": "train-00042", "label": "cat"}],
    }
    verdicts = screening_verdicts(summary, plan.ready)
    relabel = summary | {"duplicate_files": [summary["duplicate_files"][0] | {"label": "dog"}]}
    verdict, reason = screening_verdicts(relabel, plan.ready)["b" * 32]
    assert (
        verdict == "conflict" and "holds this image as dog, the answer says cat (train-00042 of the ingested" in reason
    )
    assert verdicts["a" * 32] == ("refused", "test-set leak: an exact copy")
    assert verdicts["b" * 32][0] == "duplicate" and "train-00042" in verdicts["b" * 32][1]
    assert verdicts["c" * 32] == ("added", "batch-1")


def test_an_export_killed_before_its_journal_leaves_a_folder_the_next_run_removes(tmp_path):
    """Only a folder with neither a summary.json nor a handled answer naming it is unfinished."""
    exports = tmp_path / "exports"
    for name in ("finished", "recorded", "killed"):
        (exports / name / "inbox").mkdir(parents=True)
    (exports / "finished" / "summary.json").write_text("{}")
    exported = {"a" * 32: {"answer_id": "x", "export_id": "recorded"}}
    assert unfinished_exports(exports, exported) == [exports / "killed"]
    assert unfinished_exports(tmp_path / "none yet", {}) == []


def test_the_plan_in_the_journal_names_the_same_answers_without_pixels():
    image = np.full((32, 32, 3), 3, np.uint8)
    answers = [new_answer("a" * 32, "cat", "dog", "v1", "alice"), new_answer("d" * 32, "ship", "dog", "v1", "bob")]
    plan = plan_export(latest(answers), {}, {"a" * 32: image})
    back = ExportPlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert [(r.answer, r.digest, r.pixels) for r in back.ready] == [(answers[0], plan.ready[0].digest, None)]
    assert back.lost == [answers[1]] and back.held == []


def test_a_damaged_journal_stops_the_run_naming_the_file(tmp_path):
    journal = tmp_path / ".export-journal.json"
    assert unfinished(journal) is None
    journal.write_text('{"export_id": ')
    with pytest.raises(PipelineInputError, match=r"\.export-journal\.json is damaged .*delete it"):
        unfinished(journal)


def test_an_id_or_label_that_is_a_path_is_no_answer():
    """The export names files `<label>/<prediction_id>.png`: an answer whose id or label is a path is refused."""
    with pytest.raises(ValueError, match="32 hex digits"):
        new_answer("../../escape" + "0" * 20, "cat", "dog", "v1", "alice")
    with pytest.raises(ValueError, match="not a class name"):
        new_answer("b" * 32, "../../etc", "dog", "v1", "alice")


def test_any_class_name_is_an_answer_and_names_match_in_any_unicode_form_and_case():
    from serving.http_errors import BadInput
    from serving.review_routes import class_named

    classes = ["猫 cat", "Ñandú", "emoji😀", "a.b+c", "x" * 200]
    for name in classes:  # a class folder's name, whatever its letters, is a label a reviewer can give
        assert new_answer("0" * 32, name, classes[0], "v1", "local").label == name
    decomposed = "N\u0303andu\u0301"  # how macOS writes "Ñandú"
    assert class_named(f" {decomposed.upper()} ", classes) == "Ñandú"
    with pytest.raises(BadInput, match="is not a class"):
        class_named("cat", classes)
    with pytest.raises(ValueError, match="is not a class name"):
        new_answer("0" * 32, "two\nlines", classes[0], "v1", "local")
