"""One monitor run's pieces: which logged images form the window, the reference they are compared with,
and the verdict as monitor.json holds it.

The default (**incremental**) window is judged by file, not by time: every prediction-log file that
no earlier incremental run judged. A log file is whole once it is in place and never changes (each
flush gets a new name), so a file present is judged in full and a row still in a writer's buffer, or
held through a disk that refuses writes, lands in a later file that the next run judges: every row is
judged by exactly one incremental run however late it arrives, from however many writers, whatever
the clock did. `monitoring/state.json` (`MonitorState`, written atomically: the commit) names the
judged files; a day's merged `day.parquet` holds judged files only (`compact_days(judged=…)`), so it
is judged by construction. A window under `MIN_WINDOW` images gets no verdict and its files stay
unjudged (the window grows); one over `max_images` is judged on a seeded random sample of them, and
all its rows count as judged. `--last N` and `--since T` only look (`read_window`): they never touch
the state.

A run that finds something odd about its bookmark says so (`Notes`: the log, monitor.json, the
report): a killed run finished or undone, a damaged or earlier-form state file, rows that arrived late,
a clock gone backwards, judged files gone without retention or a merge to explain it.

The **reference** is the champion's view of the test set (held out: the champion never trained on it),
scored once per model and test set and kept under `monitoring/references/`.
"""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cifarflow import journal
from cifarflow.data.shards import read_split
from cifarflow.errors import PipelineInputError
from cifarflow.files import read_json, text_digest, write_json
from cifarflow.layout import DataLayout
from cifarflow.monitoring.embedding import load_embedder, load_scored, save_scored, score
from cifarflow.monitoring.log import COMPACTED, FLUSH_S, LogWindow, compact_days, log_files, read_files, readable
from cifarflow.monitoring.signals import FAMILY_ALPHA, MIN_WINDOW, Signal
from cifarflow.outputs import read_whole
from cifarflow.paths import printable
from cifarflow.registry.model_versions import Version

MAX_IMAGES = 10_000  # the most images a window is judged on (a random sample of a bigger one)
LATE_S = 2 * FLUSH_S  # rows behind the newest judged row by more than a writer's buffer: a late arrival


@dataclass(frozen=True)
class WindowBounds:
    """A look (`--since`, `--last`): (since, until], UTC, `since` None for the log's beginning, `last`
    the most recent N. An incremental window is `incremental` and names its `files` (data dir keys,
    `file_key`) instead."""

    since: datetime | None
    until: datetime
    last: int | None = None
    incremental: bool = False
    files: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        bounds = {"since": self.since and self.since.isoformat(), "until": self.until.isoformat(), "last": self.last}
        return bounds | ({"incremental": True, "files": len(self.files)} if self.incremental else {})


def parse_time(text: str, what: str = "--since") -> datetime:
    """An ISO 8601 time; one without a zone is UTC. PipelineInputError naming `what` for anything else."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise PipelineInputError(f"{what} {text!r} is not an ISO 8601 time (e.g. 2026-11-30T08:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- the bookmark: which log files are judged -----------------------------------------------------------


def file_key(path: Path) -> str:
    """A log file as the state names it: `day=YYYY-MM-DD/<name>.parquet` (the data dir may move)."""
    return f"{path.parent.name}/{path.name}"


@dataclass
class MonitorState:
    """monitoring/state.json. `judged`: the keys (`file_key`) of the log files incremental runs judged
    (a `day.parquet` is judged by construction and never listed); `newest`: the newest scoring time
    judged; `run`: when the previous incremental run started, by this machine's clock."""

    judged: set[str] = field(default_factory=set)
    newest: datetime | None = None
    run: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "judged": sorted(self.judged),
            "newest": self.newest and self.newest.isoformat(),
            "run": self.run and self.run.isoformat(),
        }

    @classmethod
    def from_json(cls, data: Any) -> MonitorState:
        """ValueError, KeyError or TypeError for anything but `to_json`'s shape."""
        if not isinstance(data, dict) or not isinstance(data["judged"], list):
            raise ValueError("not the monitor's state ({judged, newest, run})")
        moment = lambda key: data.get(key) and parse_time(data[key], key)  # noqa: E731
        return cls({str(key) for key in data["judged"]}, moment("newest"), moment("run"))


def read_state(layout: DataLayout, warn: Callable[[str], None]) -> MonitorState:
    """The judged files. A first run: none. The earlier form ({"until": T}, judged by time) and a damaged
    file are read as "the small files whose rows all precede T are judged": T the earlier form's, or for a
    damaged file the newest row any incremental report judged (none: nothing is judged). Either
    is said in a warning; the next commit writes the file anew."""
    path = layout.monitor_state
    if not path.exists():
        return MonitorState()
    try:
        data = read_json(path)
        if isinstance(data, dict) and set(data) == {"until"}:
            until = parse_time(data["until"], f"{path}: until")
            state = judged_up_to(layout, until)
            warn(f"{path} holds the earlier form (judged up to {until.isoformat()}): the {len(state.judged):,} "
                 "log files whose rows all precede it count as judged, every other file is judged now")  # fmt: skip
            return state
        return MonitorState.from_json(data)
    except (OSError, ValueError, KeyError, TypeError, PipelineInputError) as error:
        until = newest_reported(layout)
        state = judged_up_to(layout, until) if until else MonitorState()
        if until:
            decided = (f"the {len(state.judged):,} log files whose rows all precede the newest row the "
                       f"incremental reports judged ({until.isoformat()}) count as judged, every other file is "
                       "judged now")  # fmt: skip
        else:
            decided = "no incremental report says what was judged: every log file is judged now"
        warn(f"{path} cannot be read ({type(error).__name__}: {error}); {decided}. "
             "No file is judged twice; a file that came late, with rows older than that, is skipped")  # fmt: skip
        return state


def judged_up_to(layout: DataLayout, until: datetime) -> MonitorState:
    """The state that counts a small log file as judged when all its rows were scored at or before `until`."""
    judged = set()
    for path in log_files(layout.prediction_log):
        if path.name == COMPACTED:
            continue
        try:
            newest = pc.max(pq.read_table(path, columns=["time"])["time"]).as_py()
        except (OSError, ValueError, KeyError):
            continue  # unreadable: the run names it
        if newest is None or newest <= until:
            judged.add(file_key(path))
    return MonitorState(judged, until)


def newest_reported(layout: DataLayout) -> datetime | None:
    """The newest scoring time any incremental report with a verdict judged (every row of its window, not
    only a sample's); None without one. Every file an incremental run judged holds rows up to it at most."""
    newest = None
    for report in layout.monitor_reports.glob("*/monitor.json"):
        try:
            summary = read_json(report)
            window = summary["window"]
            if window.get("incremental") and summary["drift"] is not None and window["last_logged"]:
                moment = parse_time(window["last_logged"])
                newest = moment if newest is None else max(newest, moment)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, PipelineInputError):
            continue
    return newest


def write_state(layout: DataLayout, state: MonitorState) -> None:
    write_json(layout.monitor_state, state.to_json())


def resume_run(layout: DataLayout, state: MonitorState, emit: Callable[[dict], None]) -> str | None:
    """Finish or undo the incremental run a kill left (its journal); what was done, or None if nothing was
    left. Finished: its report's monitor.json is whole, so its files count as judged (when it had a
    verdict) and its drift event, if it never went out, is emitted now (`emit(monitor.json)`). Undone:
    its partial report folder is removed and its files stay unjudged, for this run."""
    record = journal.unfinished(layout.monitor_journal)
    if record is None:
        return None
    folder = layout.monitor_reports / record["report"]
    try:
        summary = read_json(folder / "monitor.json")
    except (OSError, ValueError):
        summary = None
    if summary is None:
        shutil.rmtree(folder, ignore_errors=True)
        journal.end(layout.monitor_journal)
        return (f"the monitor run killed before its report was whole was undone: its partial report "
                f"{record['report']} was removed, its {len(record['files']):,} log files are judged by "
                "this run")  # fmt: skip
    done = f"the monitor run killed after its report ({record['report']}: {summary['verdict']}) was finished"
    if summary["drift"] is not None:
        commit(layout, state, record["files"], summary["window"]["last_logged"], None)
        done += f": its {len(record['files']):,} log files are now judged"
    if summary["drift"] and not record.get("emitted"):
        emit(summary)
        done += "; its drift event, never sent, was emitted now"
    journal.end(layout.monitor_journal)
    return done


def begin_run(layout: DataLayout, report: Path, files: tuple[str, ...]) -> None:
    """The run's journal: the report folder it writes and the files it will commit (see `resume_run`)."""
    journal.begin(layout.monitor_journal, {"report": report.name, "files": list(files), "emitted": False})


def drift_emitted(layout: DataLayout) -> None:
    """Note in the journal that the run's drift event went out (a resumed run does not send it twice)."""
    record = journal.unfinished(layout.monitor_journal) or {}
    journal.begin(layout.monitor_journal, record | {"emitted": True})


def commit(
    layout: DataLayout,
    state: MonitorState,
    files: list[str] | tuple[str, ...],
    newest: str | None,
    now: datetime | None,
) -> None:
    """The commit point: `files` judged (rows up to `newest`, ISO), the run started at `now` (None: keep)."""
    state.judged |= set(files)
    if newest:
        state.newest = max(filter(None, (state.newest, parse_time(newest))))
    state.run = now or state.run
    write_state(layout, state)


def end_run(layout: DataLayout, state: MonitorState, result: MonitorSummary, files: tuple[str, ...], now: datetime):
    """Commit the run (its files judged if it had a verdict; a window too small stays open) and end it."""
    judged = files if result.drift is not None else ()
    commit(layout, state, judged, result.window.get("last_logged") if judged else None, now)
    journal.end(layout.monitor_journal)


def odd_bookmark(layout: DataLayout, state: MonitorState, now: datetime, keep_days: int) -> list[str]:
    """What is odd about the bookmark before a run (each a sentence; [] for nothing): a clock earlier than
    the previous run's, judged files gone that neither retention (a day folder gone whole, or a day older
    than `keep_days`) nor a merge explains. Gone files are forgotten (the caller writes the state)."""
    notes = []
    if state.run and now < state.run:
        notes.append(f"the clock ({now.isoformat(timespec='seconds')}) reads earlier than the previous run's start "
                     f"({state.run.isoformat(timespec='seconds')}): files are judged by name, so nothing is skipped "
                     "or judged twice; retention and merges go by this clock")  # fmt: skip
    present = {file_key(path) for path in log_files(layout.prediction_log)}
    gone = sorted(state.judged - present)
    oldest_kept = now.date() - timedelta(days=keep_days - 1)
    root = layout.prediction_log  # retention deletes whole days, whatever --keep-days an earlier run had
    unexplained = [key for key in gone if (root / key).parent.is_dir() and not day_before(key, oldest_kept)]
    state.judged -= set(gone)
    if unexplained:
        notes.append(f"{len(unexplained):,} judged log files are gone that neither retention nor a merge "
                     f"removed (first: {unexplained[0]}): deleted by hand? Their rows were judged; nothing "
                     "else is lost")  # fmt: skip
    return notes


def day_before(key: str, day: date) -> bool:
    try:
        return date.fromisoformat(key.split("/")[0].removeprefix("day=")) < day
    except ValueError:
        return False


def unjudged_files(layout: DataLayout, state: MonitorState) -> tuple[str, ...]:
    """The keys of the log files no incremental run has judged, in name order."""
    return tuple(
        file_key(path)
        for path in log_files(layout.prediction_log)
        if path.name != COMPACTED and file_key(path) not in state.judged
    )


def merge_judged(layout: DataLayout, state: MonitorState, today: date, warn: Callable[[str], None]) -> list[Path]:
    """Merge each finished day's judged files into its day.parquet (`compact_days`), journaled so that the
    state forgets exactly the files a merge removed, even one a kill cut short; the day folders merged."""
    root = layout.prediction_log
    files = [p for p in log_files(root, last=today - timedelta(days=1)) if file_key(p) in state.judged]
    if not files:
        return []
    journal.begin(layout.monitor_merge_journal, {"files": [file_key(p) for p in files]})
    merged = compact_days(root, today, warn, judged=lambda path: file_key(path) in state.judged)
    journal.kill_point("monitor:merged")
    state.judged -= {file_key(p) for p in files if not p.exists()}
    write_state(layout, state)
    journal.end(layout.monitor_merge_journal)
    return merged


def resume_merge(layout: DataLayout, state: MonitorState) -> str | None:
    """Finish a merge a kill cut short: the judged files it removed are forgotten (the rest, still there,
    are merged again, each prediction once); what was done, or None if no merge was left."""
    record = journal.unfinished(layout.monitor_merge_journal)
    if record is None:
        return None
    root = layout.prediction_log
    gone = {key for key in record["files"] if not (root / key).exists()}
    state.judged -= gone
    write_state(layout, state)
    journal.end(layout.monitor_merge_journal)
    return (f"the merge of judged log files a kill cut short was finished: {len(gone):,} of its "
            f"{len(record['files']):,} files were merged and removed, the rest are merged again")  # fmt: skip


def late_rows(times: np.ndarray, newest: datetime | None) -> str | None:
    """A sentence about the rows scored more than `LATE_S` before the newest row judged earlier (held by
    a writer through a full disk, written out of clock order); None when there are none."""
    if newest is None or not len(times):
        return None
    cut = np.datetime64(newest.replace(tzinfo=None) - timedelta(seconds=LATE_S), "us")
    late = times[times < cut]
    if not len(late):
        return None
    behind = (np.datetime64(newest.replace(tzinfo=None), "us") - late.min()) / np.timedelta64(1, "s")
    return (f"{len(late):,} rows arrived late, scored up to {timedelta(seconds=round(float(behind)))} before the "
            f"newest row judged earlier ({newest.isoformat()}); judged now")  # fmt: skip


def read_unjudged(
    layout: DataLayout,
    files: tuple[str, ...],
    state: MonitorState | None,
    max_images: int,
    warn: Callable[[str], None],
) -> tuple[LogWindow, np.ndarray, list[str]]:
    """An incremental window: the rows of the log `files` (keys) without their probabilities (the champion
    scores the pixels itself, so rows of models with other label sets are judged too), a seeded random
    sample of `max_images` of them when there are more; (N,) datetime64[us] the times of all the rows; and
    the notes it found: unreadable files (left out, counted as judged), late rows, the sample."""
    paths = [layout.prediction_log / key for key in files]
    kept = readable(paths, warn=warn)
    notes = []
    if len(kept) < len(paths):
        left_out = sorted(set(paths) - set(kept))
        notes.append(f"{len(left_out):,} unreadable log files left out and counted as judged (first: "
                     f"{printable(left_out[0])})")  # fmt: skip
    seed = int(text_digest(files)[:8], 16)
    window, times = read_files(kept, max_images, seed, warn, probabilities=False)
    late = late_rows(times, state.newest if state else None)
    notes += [late] if late else []
    if len(window) < len(times):
        notes.append(f"{len(times):,} rows in the window: a random sample of {len(window):,} was judged "
                     "(--max-images); all of them count as judged")  # fmt: skip
    return window, times, notes


def window_bounds(last: int | None, since: datetime | None, now: datetime, files: tuple[str, ...]) -> WindowBounds:
    """The window a run looks at (see the module docstring): `files` unless `last` or `since` say otherwise."""
    if since is None and last is None:
        return WindowBounds(None, now, incremental=True, files=files)
    return WindowBounds(since, now, last)


def test_shards(layout: DataLayout) -> list[dict[str, Any]]:
    """The ingested test split's shard entries; PipelineInputError when the data dir has none."""
    manifest = read_whole(lambda: read_json(layout.shard_manifest))
    shards = (manifest or {}).get("splits", {}).get("test", {}).get("shards") if isinstance(manifest, dict) else None
    if not shards:
        raise PipelineInputError(
            f"no test set in {layout.root} to compare with: the monitor's reference is the ingested test split "
            "(run the pipeline on this data dir first)"
        )
    return shards


def reference_file(layout: DataLayout, version: Version) -> Path:
    """Where `version`'s reference lives: named by the model file's and the test shards' digests."""
    test_set = text_digest([shard["sha256"] for shard in test_shards(layout)])
    return layout.monitor_references / f"{version.model_id[:16]}-{test_set[:12]}" / "reference.npz"


def build_reference(layout: DataLayout, version: Version, warn: Callable[[str], None] = print) -> Path:
    """The reference for `version`: its features, probabilities and pixel counts on the test set, scored
    now unless a whole copy is on disk (a damaged one is named in a warning and scored again).
    PipelineInputError when the data dir has no ingested test set."""
    path = reference_file(layout, version)
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
    """One monitor run's verdict; `to_json()` is monitor.json. `drift` is None without a verdict (a window
    under `MIN_WINDOW` images); `images`: how many were scored (a sample of a bigger window); `window`
    holds the bounds and what the logged rows were (`rows`: all of them, their first and last scoring
    time, and of the images scored the sources and serving versions); `notes`: what was odd about the
    bookmark (see the module docstring); `report` the run's folder."""

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


def summarize(
    window: LogWindow,
    times: np.ndarray,
    bounds: WindowBounds,
    version: Version,
    reference_images: int,
    signals: list[Signal],
    report: str,
    notes: list[str],
) -> MonitorSummary:
    """The run's verdict from its window (the images scored), the (N,) datetime64[us] scoring times of all
    the window's rows, and its signals (no signals: no verdict)."""
    moment = lambda t: _to_utc(t).isoformat()  # noqa: E731
    return MonitorSummary(
        images=len(window),
        model_version=version.name,
        window=bounds.to_json()
        | {
            "rows": len(times),
            "first": moment(times.min()) if len(times) else None,
            "last_logged": moment(times.max()) if len(times) else None,
            "sources": dict(Counter(window.sources.tolist())),
            "model_versions": dict(Counter(window.model_versions.tolist())),
        },
        reference_images=reference_images,
        drift=any(signal.drift for signal in signals) if signals else None,
        signals=tuple(signals),
        report=report,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        notes=tuple(notes),
    )


def _to_utc(value: np.datetime64) -> datetime:
    return value.astype("datetime64[us]").astype(datetime).replace(tzinfo=UTC)
