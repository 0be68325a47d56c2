"""The feedback library without a server: who may answer (tokens), the append-only feedback log, the
uncertainty measures and the queue's order, the log index, and the export's plan (conflicts, lost)."""

from __future__ import annotations

import json
import multiprocessing
import threading
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cifarflow.errors import PipelineInputError
from cifarflow.feedback.access import AccessDenied, ReviewAccess, load_reviewers, parse_reviewers
from cifarflow.feedback.answers import AnswerBook, append_answer, latest, new_answer, read_answers
from cifarflow.feedback.corrections import ExportPlan, plan_export, screening_verdicts, unfinished_exports
from cifarflow.feedback.queue import LogIndex, least_confident_first, queue_order, read_pixels, uncertainty
from cifarflow.journal import unfinished
from cifarflow.monitoring.log import PredictionLog, log_files, log_table, new_ids, write_log_file

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
    from cifarflow.feedback.access import listens_on_loopback

    assert [listens_on_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost")] == [True] * 4
    assert [listens_on_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org")] == [False] * 4


def test_every_token_is_compared_whichever_matches(monkeypatch):
    import cifarflow.feedback.access as access

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


# --- the feedback log --------------------------------------------------------------------------------------


def test_the_last_answer_counts_and_every_answer_is_kept(tmp_path):
    path = tmp_path / "feedback" / "answers.jsonl"
    for label in ("cat", "dog", "ship"):
        append_answer(path, new_answer("a" * 32, label, "cat", "v1", "alice"))
    append_answer(path, new_answer("b" * 32, "cat", "cat", "v1", "bob"))
    answers = read_answers(path)
    assert [a.label for a in answers] == ["cat", "dog", "ship", "cat"]
    assert {pid: a.label for pid, a in latest(answers).items()} == {"a" * 32: "ship", "b" * 32: "cat"}
    assert latest(answers)["a" * 32].corrects and not latest(answers)["b" * 32].corrects


def test_a_line_cut_short_is_skipped_and_the_next_answer_starts_a_fresh_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    append_answer(path, new_answer("a" * 32, "cat", "dog", "v1", "alice"))
    with open(path, "ab") as handle:
        handle.write(b'{"answer_id": "half a li')  # a crash mid-write
    append_answer(path, new_answer("b" * 32, "ship", "dog", "v1", "alice"))
    warnings: list[str] = []
    answers = read_answers(path, warn=warnings.append)
    assert [a.prediction_id for a in answers] == ["a" * 32, "b" * 32]
    assert len(warnings) == 1 and "line 2" in warnings[0]


def _append_many(path, worker: int, count: int) -> None:
    for i in range(count):
        append_answer(path, new_answer(f"{worker:02d}{i:030d}", "cat", "dog", "v1", f"w{worker}"))


def test_concurrent_writers_in_threads_and_processes_never_interleave(tmp_path):
    path = tmp_path / "answers.jsonl"
    processes = [multiprocessing.get_context("spawn").Process(target=_append_many, args=(path, w, 50)) for w in (1, 2)]
    threads = [threading.Thread(target=_append_many, args=(path, w, 50)) for w in (3, 4)]
    for worker in processes + threads:
        worker.start()
    for worker in processes + threads:
        worker.join(60)
    lines = path.read_text().splitlines()
    assert len(lines) == 200 and all(json.loads(line)["label"] == "cat" for line in lines)


def test_the_answer_book_reads_only_what_was_appended_and_waits_for_a_whole_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    book = AnswerBook(path)
    assert book.refresh() == {}
    assert book.record(new_answer("a" * 32, "cat", "dog", "v1", "alice")) is False
    assert book.record(new_answer("a" * 32, "dog", "dog", "v1", "bob")) is True
    with open(path, "ab") as handle:
        handle.write(json.dumps({"prediction_id": "b" * 32})[:-3].encode())  # a writer mid-line
    assert set(book.refresh()) == {"a" * 32} and book.refresh()["a" * 32].label == "dog"


# --- uncertainty and the queue -------------------------------------------------------------------------------


def test_the_three_measures_on_known_rows():
    p = np.array([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3]])
    assert uncertainty(p, "margin") == pytest.approx([0.8, 0.15, 1.0])
    assert uncertainty(p, "top") == pytest.approx([0.5, 0.1, 2 / 3])
    assert uncertainty(p, "entropy")[2] == pytest.approx(np.log(3))
    assert list(least_confident_first(p, "margin")) == [2, 0, 1]
    with pytest.raises(ValueError, match="unknown uncertainty measure"):
        uncertainty(p, "vibes")
    with pytest.raises(ValueError, match="must be"):
        uncertainty(np.ones(3), "top")


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, (20, 10), elements=st.floats(0.001, 1.0)), st.sampled_from(["margin", "top", "entropy"]))
def test_least_confident_first_is_a_permutation_in_rising_confidence(raw, measure):
    p = raw / raw.sum(axis=1, keepdims=True)
    order = least_confident_first(p, measure)
    assert sorted(order) == list(range(20))
    scores = uncertainty(p, measure)[order]
    assert np.all(np.diff(scores) <= 1e-12)
    assert np.all(uncertainty(p, "top") <= 1 - 1 / 10 + 1e-9)


def test_the_queue_leaves_out_answered_ones_and_filters_by_predicted_class():
    ids = np.array(["a", "b", "c", "d"])
    p = np.zeros((4, 10))
    p[0, [3, 5]] = [0.55, 0.45]  # cat, close call
    p[1, [3, 5]] = [0.95, 0.05]  # cat, sure
    p[2, [8, 0]] = [0.5, 0.5]  # ship, a coin toss
    p[3, [8, 0]] = [0.7, 0.3]  # ship
    assert list(ids[queue_order(ids, p, set(), CLASSES)]) == ["c", "a", "d", "b"]
    assert list(ids[queue_order(ids, p, {"c"}, CLASSES)]) == ["a", "d", "b"]
    assert list(ids[queue_order(ids, p, set(), CLASSES, label="cat")]) == ["a", "b"]
    assert list(ids[queue_order(ids, p, {"b"}, CLASSES, order="random")]) == ["a", "c", "d"]  # by (random) id
    with pytest.raises(ValueError, match="not a class"):
        queue_order(ids, p, set(), CLASSES, label="kat")
    with pytest.raises(ValueError, match="unknown order"):
        queue_order(ids, p, set(), CLASSES, order="best")


def log_some(root, count: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = new_ids(count)
    probabilities = rng.dirichlet(np.ones(10), count).astype(np.float32)
    pixels = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    table = log_table(ids, "service", "v1", probabilities, pixels, datetime.now(UTC))
    return ids, probabilities, pixels, write_log_file(root, table, f"{ids[0]}.parquet")


def test_the_log_index_reads_new_files_finds_ids_and_forgets_removed_files(tmp_path):
    root = tmp_path / "log"
    index = LogIndex(root)
    index.refresh()
    assert len(index.rows(10)[0]) == 0 and index.find("x") is None
    first_ids, first_p, first_pixels, (first_file,) = log_some(root, 5, 1)
    second_ids, *_ = log_some(root, 3, 2)
    index.refresh()
    ids, _, versions, probabilities = index.rows(10)
    assert set(ids) == set(first_ids + second_ids) and set(versions) == {"v1"}
    path, row = index.find(first_ids[2])
    assert path == first_file and np.allclose(row.probabilities, first_p[2])
    assert np.array_equal(read_pixels([path], [first_ids[2]])[first_ids[2]], first_pixels[2])
    first_file.unlink()  # retention or compaction removed it
    index.refresh()
    assert set(index.rows(10)[0]) == set(second_ids) and index.find(first_ids[2]) is None


def test_flush_puts_what_waits_on_disk_now(tmp_path):
    root = tmp_path / "log"
    with PredictionLog(root, flush_s=3600) as log:  # the interval alone would not write it this hour
        log.append(new_ids(2), "service", "v1", np.full((2, 10), 0.1, np.float32), np.zeros((2, 32, 32, 3), np.uint8))
        assert log.flush(timeout=10)
        assert len(log_files(root)) == 1 and log.written == 2
        assert log.flush(timeout=10)  # nothing waiting: at once


# --- the export's plan ---------------------------------------------------------------------------------------------


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
    assert back.lost == [answers[1]] and back.held == [] and back.waiting == []


def test_a_damaged_journal_stops_the_run_naming_the_file(tmp_path):
    journal = tmp_path / ".export-journal.json"
    assert unfinished(journal) is None
    journal.write_text('{"export_id": ')
    with pytest.raises(PipelineInputError, match=r"\.export-journal\.json is damaged .*delete it"):
        unfinished(journal)


def test_a_hand_edited_line_cannot_steer_a_file_name(tmp_path):
    """The export names files `<label>/<prediction_id>.png`: a line whose id or label is a path is skipped."""
    path = tmp_path / "answers.jsonl"
    good = new_answer("a" * 32, "cat", "dog", "v1", "alice")
    append_answer(path, good)
    fields = {k: getattr(good, k) for k in ("answer_id", "predicted", "model_version", "reviewer", "time")}
    with open(path, "a") as handle:
        handle.write(json.dumps(fields | {"prediction_id": "../../escape" + "0" * 20, "label": "cat"}) + "\n")
        handle.write(json.dumps(fields | {"prediction_id": "b" * 32, "label": "../../etc"}) + "\n")
    warnings: list[str] = []
    assert [a.prediction_id for a in read_answers(path, warn=warnings.append)] == ["a" * 32]
    assert len(warnings) == 2


def test_a_merged_day_with_two_label_sets_and_a_damaged_file_leave_the_rest_indexed(tmp_path):
    """compact_days merges a day on which the champion's label set changed into one file; the index keeps
    each label set apart and serves the one asked for; a file that does not read is left out, named."""
    from datetime import timedelta

    from cifarflow.monitoring.log import compact_days

    root = tmp_path / "log"
    yesterday = datetime.now(UTC) - timedelta(days=1)
    ten, five = new_ids(4), new_ids(3)
    pixels = np.zeros((4, 32, 32, 3), np.uint8)
    write_log_file(
        root, log_table(ten, "service", "v1", np.full((4, 10), 0.1, np.float32), pixels, yesterday), "a.parquet"
    )
    write_log_file(
        root, log_table(five, "service", "v2", np.full((3, 5), 0.2, np.float32), pixels[:3], yesterday), "b.parquet"
    )
    assert len(compact_days(root)) == 1 and len(log_files(root)) == 1
    (damaged,) = write_log_file(
        root,
        log_table(new_ids(1), "service", "v1", np.full((1, 10), 0.1, np.float32), pixels[:1], datetime.now(UTC)),
        "c.parquet",
    )
    damaged.write_bytes(damaged.read_bytes()[:50])
    warnings: list[str] = []
    index = LogIndex(root, warn=warnings.append)
    index.refresh()
    assert set(index.rows(10)[0]) == set(ten) and index.rows(10)[3].shape == (4, 10)
    assert set(index.rows(5)[0]) == set(five) and index.find(five[0])[1].model_version == "v2"
    assert any("c.parquet" in w for w in warnings)


def test_an_image_not_found_while_a_log_file_was_unreadable_waits_instead_of_being_lost():
    current = latest([new_answer("a" * 32, "cat", "dog", "v1", "alice")])
    assert [a.prediction_id for a in plan_export(current, {}, {}).lost] == ["a" * 32]
    waiting = plan_export(current, {}, {}, whole_log=False)
    assert waiting.lost == [] and [a.prediction_id for a in waiting.waiting] == ["a" * 32]


def test_readers_pause_merges_and_a_merge_under_way_is_waited_for(tmp_path):
    from datetime import timedelta

    from cifarflow.monitoring.log import compact_days, merges_paused

    root = tmp_path / "log"
    yesterday = datetime.now(UTC) - timedelta(days=1)
    for name in ("a", "b"):
        table = log_table(
            new_ids(2),
            "service",
            "v1",
            np.full((2, 10), 0.1, np.float32),
            np.zeros((2, 32, 32, 3), np.uint8),
            yesterday,
        )
        write_log_file(root, table, f"{name}.parquet")
    with merges_paused(root):
        assert compact_days(root) == [] and len(log_files(root)) == 2  # the files a reader listed stay put
    assert len(compact_days(root)) == 1 and len(log_files(root)) == 1


def test_a_day_merged_again_is_read_again(tmp_path):
    """A file that lands in a finished day after its merge (a flush just after midnight) is merged into
    the same `day.parquet`, rewritten in place: the index reads it again, losing no prediction."""
    from datetime import timedelta

    from cifarflow.monitoring.log import compact_days

    root = tmp_path / "log"
    yesterday = datetime.now(UTC) - timedelta(days=1)
    pixels = np.zeros((2, 32, 32, 3), np.uint8)
    first, second, late = new_ids(2), new_ids(2), new_ids(2)
    probabilities = np.full((2, 10), 0.1, np.float32)
    for name, ids in (("a", first), ("b", second)):
        write_log_file(root, log_table(ids, "service", "v1", probabilities, pixels, yesterday), f"{name}.parquet")
    compact_days(root)
    index = LogIndex(root)
    index.refresh()
    assert set(index.rows(10)[0]) == set(first + second)
    write_log_file(root, log_table(late, "service", "v1", probabilities, pixels, yesterday), "c.parquet")
    compact_days(root)
    index.refresh()
    assert set(index.rows(10)[0]) == set(first + second + late) and index.find(late[0]) is not None


def test_flush_says_at_once_when_the_log_cannot_be_written(tmp_path):
    import time

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log's folder should be")
    warnings: list[str] = []
    with PredictionLog(blocked, flush_s=3600, warn=warnings.append) as log:
        log.append(new_ids(1), "service", "v1", np.full((1, 10), 0.1, np.float32), np.zeros((1, 32, 32, 3), np.uint8))
        assert log.flush(timeout=10) is False
        started = time.monotonic()
        assert log.flush(timeout=10) is False and time.monotonic() - started < 2  # failing: no retry per call
    assert warnings
