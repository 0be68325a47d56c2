"""One monitor run's pieces: the window (by default the rows after the bookmark in monitoring/state.json),
the reference (the champion's view of the test set), the verdict (monitor.json)."""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow import journal
from cifarflow.data.shards import data_set_words, read_split
from cifarflow.errors import PipelineInputError
from cifarflow.files import read_json, text_digest, write_json
from cifarflow.layout import DataLayout
from cifarflow.monitoring.embedding import load_embedder, load_scored, save_scored, score
from cifarflow.monitoring.log import FLUSH_S, Logged, last_seq, read_window, window_keys
from cifarflow.monitoring.signals import FAMILY_ALPHA, MIN_WINDOW, Signal
from cifarflow.outputs import read_whole
from cifarflow.registry.store import Version

MAX_IMAGES = 10_000  # the most images a window is judged on (a random sample of a bigger one)
LATE_S = 2 * FLUSH_S  # rows scored this long before the newest judged row: a late arrival


@dataclass(frozen=True)
class WindowBounds:
    """A look: (since, until] UTC, or the `last` N; or incremental: the rows with seq in (after_seq, upto_seq]."""

    since: datetime | None
    until: datetime
    last: int | None = None
    after_seq: int | None = None  # None: a look
    upto_seq: int | None = None

    @property
    def incremental(self) -> bool:
        return self.after_seq is not None

    def to_json(self) -> dict[str, Any]:
        bounds = {"since": self.since and self.since.isoformat(), "until": self.until.isoformat(), "last": self.last}
        return bounds | ({"incremental": True, "seqs": [self.after_seq, self.upto_seq]} if self.incremental else {})


def parse_time(text: str, what: str = "--since") -> datetime:
    """An ISO 8601 time; one without a zone is UTC. PipelineInputError naming `what` for anything else."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise PipelineInputError(f"{what} {text!r} is not an ISO 8601 time (e.g. 2026-11-30T08:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class MonitorState:
    """monitoring/state.json: rows up to `seq` are judged, scored up to `newest`; `run`: the previous run's start."""

    seq: int = 0
    newest: datetime | None = None
    run: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in vars(self).items()}

    @classmethod
    def from_json(cls, data: Any) -> MonitorState:
        if not isinstance(data, dict) or not isinstance(data["seq"], int):
            raise ValueError("not the monitor's state ({seq, newest, run})")
        moment = lambda key: data.get(key) and parse_time(data[key], key)  # noqa: E731
        return cls(data["seq"], moment("newest"), moment("run"))


def read_state(layout: DataLayout, warn: Callable[[str], None]) -> MonitorState:
    """The bookmark (0 at first); a damaged file counts as the last seq any incremental report judged, warned."""
    path = layout.monitor_state
    if not path.exists():
        return MonitorState()
    try:
        return MonitorState.from_json(read_json(path))
    except (OSError, ValueError, KeyError, TypeError, PipelineInputError) as error:
        seq = 0  # the last seq any incremental report with a verdict judged
        for report in layout.monitor_reports.glob("*/monitor.json"):
            try:
                summary = read_json(report)
                if summary["window"].get("incremental") and summary["drift"] is not None:
                    seq = max(seq, int(summary["window"]["seqs"][1]))
            except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
                continue
        warn(
            f"{path} cannot be read ({type(error).__name__}: {error}); the rows up to seq {seq:,}, the last any "
            "incremental report judged, count as judged: none is judged twice or skipped"
        )
        return MonitorState(seq)


def resume_run(layout: DataLayout, state: MonitorState, emit: Callable[[dict], None]) -> str | None:
    """Finish the run a kill left (its report whole: rows judged, drift event `emit`ted if never sent) or undo
    it (partial report removed); what was done, or None."""
    record = journal.unfinished(layout.monitor_journal, ("report", "upto_seq"))
    if record is None:
        return None
    folder = layout.monitor_reports / record["report"]
    try:
        summary = read_json(folder / "monitor.json")
    except (OSError, ValueError):
        shutil.rmtree(folder, ignore_errors=True)
        journal.end(layout.monitor_journal)
        return (
            f"the monitor run killed before its report was whole was undone: its partial report "
            f"{record['report']} was removed, its rows are judged by this run"
        )
    done = f"the monitor run killed after its report ({record['report']}: {summary['verdict']}) was finished"
    if summary["drift"] is not None:
        commit(layout, state, record["upto_seq"], summary["window"]["last_logged"], None)
        done += f": its rows up to seq {record['upto_seq']:,} are now judged"
    if summary["drift"] and not record.get("emitted"):
        emit(summary)
        done += "; its drift event, never sent, was emitted now"
    journal.end(layout.monitor_journal)
    return done


def commit(layout: DataLayout, state: MonitorState, upto_seq: int, newest: str | None, now: datetime | None) -> None:
    """Rows up to `upto_seq` judged, scored up to `newest` (ISO); the run started at `now` (None: keep)."""
    state.seq = max(state.seq, upto_seq)
    if newest:
        state.newest = max(filter(None, (state.newest, parse_time(newest))))
    state.run = now or state.run
    write_json(layout.monitor_state, state.to_json())


def odd_bookmark(layout: DataLayout, state: MonitorState, now: datetime) -> list[str]:
    """Notes on a clock gone back and on a bookmark past the log's newest seq (moved back)."""
    notes = []
    if state.run and now < state.run:
        notes.append(
            f"the clock ({now.isoformat(timespec='seconds')}) reads earlier than the previous run's start "
            f"({state.run.isoformat(timespec='seconds')}): rows are judged by their order in the log, so "
            "nothing is skipped or judged twice; retention goes by this clock"
        )
    newest = last_seq(layout.prediction_log)
    if state.seq > newest:
        notes.append(
            f"the bookmark (seq {state.seq:,}) is past the log's newest row (seq {newest:,}): the log database "
            f"was replaced (restored from a backup?); every row after seq {newest:,} is judged"
        )
        state.seq = newest
    return notes


def read_bounds(
    layout: DataLayout, bounds: WindowBounds, state: MonitorState | None, max_images: int, side: int
) -> tuple[list[Logged], np.ndarray, list[str]]:
    """The window's rows at `side` × `side` px, unscored (a seeded sample of `max_images`); (N,) datetime64[us]
    times of all; notes (rows at another size, scored by a model of another data set, are left out, noted)."""
    if bounds.incremental:
        seqs, times = window_keys(layout.prediction_log, bounds.after_seq, bounds.upto_seq)
        if len(seqs) > max_images:
            seqs = np.random.default_rng([bounds.after_seq, bounds.upto_seq]).choice(seqs, max_images, replace=False)
    else:
        seqs, times = window_keys(layout.prediction_log, since=bounds.since, until=bounds.until)
        seqs, times = seqs[-(bounds.last or max_images) :], times[-(bounds.last or max_images) :]
    window = read_window(layout.prediction_log, seqs, probabilities=False)
    other = Counter(f"{row.pixels.shape[0]}×{row.pixels.shape[0]}" for row in window if row.pixels.shape[0] != side)
    window = [row for row in window if row.pixels.shape[0] == side]
    notes = [
        f"{sum(other.values()):,} rows at another image size ({', '.join(other)} px) than the champion's {side}×{side} "
        "px, scored by a model of another data set, were left out of the judgement; they count as judged"
    ][: len(other)]
    newest = state and state.newest and np.datetime64(state.newest.replace(tzinfo=None), "us")
    late = times[times < newest - np.timedelta64(round(LATE_S * 1e6), "us")] if newest is not None else times[:0]
    if len(late):
        behind = timedelta(seconds=round(float((newest - late.min()) / np.timedelta64(1, "s"))))
        notes.append(
            f"{len(late):,} rows arrived late, scored up to {behind} before the newest row judged earlier "
            f"({state.newest.isoformat()}); judged now"
        )
    if len(window) < len(times):
        notes.append(
            f"{len(times):,} rows in the window: a random sample of {len(window):,} was judged "
            "(--max-images); all of them count as judged"
        )
    return window, times, notes


def test_shards(layout: DataLayout, champion: Version) -> list[dict[str, Any]]:
    """The ingested test split's shard entries; PipelineInputError when the data dir has none, or holds another data
    set than `champion`'s (other classes or image size): the reference is the champion's own kind of data."""
    manifest = read_whole(lambda: read_json(layout.shard_manifest))
    manifest = manifest if isinstance(manifest, dict) else {}
    shards = manifest.get("splits", {}).get("test", {}).get("shards")
    if not shards:
        raise PipelineInputError(
            f"no test set in {layout.root} to compare with: the monitor's reference is the ingested test split "
            "(run the pipeline on this data dir first)"
        )
    names, side = manifest.get("label_names") or [], manifest.get("image_size", champion.side)  # v1: no size kept
    if champion.data_set_difference(names, side):
        raise PipelineInputError(
            f"the champion {champion.name} classifies {data_set_words(champion.label_names, champion.side)}, but "
            f"{layout.root} holds {data_set_words(names, side)}: the monitor's reference is the champion's own data "
            "set; run it on the data dir the champion was trained in"
        )
    return shards


def build_reference(layout: DataLayout, version: Version, warn: Callable[[str], None] = print) -> Path:
    """`version`'s scores of the test set, scored unless whole on disk, in a file named by the model file's and the
    test shards' digests; PipelineInputError without a test set."""
    test_set = text_digest([shard["sha256"] for shard in test_shards(layout, version)])
    path = layout.monitor_references / f"{version.model_id[:16]}-{test_set[:12]}" / "reference.npz"
    if path.is_file():
        try:
            load_scored(path)
            return path
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            warn(f"{path} is damaged ({type(error).__name__}: {error}); scoring the reference again")
    images, _ = read_split(layout.shard_manifest, "test")
    save_scored(path, score(load_embedder(version.preset, version.model_path), images))
    return path


@dataclass(frozen=True)
class MonitorSummary:
    """One run's verdict, `to_json()` is monitor.json; `drift` None: under `MIN_WINDOW` images, no verdict."""

    images: int
    model_version: str
    window: dict[str, Any]
    reference_images: int
    drift: bool | None
    signals: tuple[Signal, ...]
    report: str
    created: str
    notes: tuple[str, ...] = ()

    @property
    def fired(self) -> list[str]:
        return [signal.name for signal in self.signals if signal.drift]

    @property
    def verdict(self) -> str:
        if self.drift is None:
            return f"no verdict: {self.images} images in the window, fewer than {MIN_WINDOW}"
        return f"drift: {', '.join(self.fired)}" if self.drift else "no drift"

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "model_version": self.model_version,
            "window": self.window,
            "reference": {"what": "the ingested test set, scored by the champion", "images": self.reference_images},
            "drift": self.drift,
            "verdict": self.verdict,
            "family_alpha": FAMILY_ALPHA,
            "signals": {signal.name: signal.to_json() for signal in self.signals},
            "fired": self.fired,
            "report": self.report,
            "created": self.created,
            "notes": list(self.notes),
        }
