"""One monitor run's pieces: which logged images form the window, the reference they are compared with,
and the verdict as monitor.json holds it.

The **window** is the logged images in (since, until]: by default since where the previous run's window
ended (`monitoring/state.json`; the whole log on a first run), or the `last` N, and at most `MAX_IMAGES`
of the most recent. Only a default (incremental) run with a verdict moves that pointer: a window too
small to judge stays open and grows, and a `--last`/`--since` look leaves the hourly bookkeeping alone.
A window ends `SETTLE_S` seconds before the run starts, so rows still waiting in a writer's one-second
buffer belong to the next window instead of being skipped. (Rows are stamped when scored: rows a writer
holds longer, through a disk that refuses writes, can land before a window already judged and are then
never judged; the log keeps them all the same.)

The **reference** is the champion's view of the test set (held out: the champion never trained on it),
scored once per model and test set and kept under `monitoring/references/`.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cifarflow.data.shards import read_split
from cifarflow.errors import PipelineInputError
from cifarflow.files import read_json, text_digest, write_json
from cifarflow.layout import DataLayout
from cifarflow.monitoring.embedding import load_embedder, load_scored, save_scored, score
from cifarflow.monitoring.log import FLUSH_S, LogWindow
from cifarflow.monitoring.signals import FAMILY_ALPHA, MIN_WINDOW, Signal
from cifarflow.outputs import read_whole
from cifarflow.registry.versions import Version

SETTLE_S = 2 * FLUSH_S
MAX_IMAGES = 10_000


@dataclass(frozen=True)
class WindowBounds:
    """(since, until]: UTC; `since` None is the log's beginning; `last`: only the most recent N.
    `incremental`: the default window, after the previous run's; only such a run moves the pointer."""

    since: datetime | None
    until: datetime
    last: int | None = None
    incremental: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since and self.since.isoformat(), "until": self.until.isoformat(), "last": self.last}


def parse_time(text: str, what: str = "--since") -> datetime:
    """An ISO 8601 time; one without a zone is UTC. PipelineInputError naming `what` for anything else."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise PipelineInputError(f"{what} {text!r} is not an ISO 8601 time (e.g. 2026-11-30T08:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def previous_end(layout: DataLayout, warn: Callable[[str], None]) -> datetime | None:
    """Where the previous incremental run's window ended (monitoring/state.json); None on a first run. A
    damaged state file is named in a warning and read as a first run (the last images, up to the cap)."""
    if not layout.monitor_state.exists():
        return None
    try:
        return parse_time(read_json(layout.monitor_state)["until"], f"{layout.monitor_state}: until")
    except (OSError, ValueError, KeyError, TypeError, PipelineInputError) as error:
        warn(f"{layout.monitor_state} cannot be read ({error}); the window starts as on a first run. "
             "The next run writes it anew")  # fmt: skip
        return None


def window_bounds(
    layout: DataLayout, last: int | None, since: datetime | None, now: datetime, warn: Callable[[str], None] = print
) -> WindowBounds:
    """The window a run looks at (see the module docstring)."""
    until = now - timedelta(seconds=SETTLE_S)
    if since is None and last is None:
        return WindowBounds(previous_end(layout, warn), until, incremental=True)
    return WindowBounds(since, until, last)


def remember_window(layout: DataLayout, bounds: WindowBounds, images: int) -> bool:
    """Move the pointer to where this window ended, so that the next run starts there: only for an
    incremental window that got a verdict. A window too small for one stays open and grows until it is
    big enough (a quiet service is judged every few hours instead of never). True when it moved."""
    if not bounds.incremental or images < MIN_WINDOW:
        return False
    write_json(layout.monitor_state, {"until": bounds.until.isoformat()})
    return True


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
    under `MIN_WINDOW` images); `window` holds the bounds and what the logged rows were (first and last
    time, sources, serving versions); `report` the run's folder."""

    images: int
    model_version: str
    window: dict[str, Any]
    reference_images: int
    drift: bool | None
    signals: tuple[Signal, ...]
    report: str
    created: str

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
        }


def summarize(
    window: LogWindow,
    bounds: WindowBounds,
    version: Version,
    reference_images: int,
    signals: list[Signal],
    report: str,
) -> MonitorSummary:
    """The run's verdict from its window and signals (no signals: no verdict)."""
    return MonitorSummary(
        images=len(window),
        model_version=version.name,
        window=bounds.to_json()
        | {
            "first": window.start and window.start.isoformat(),
            "last_logged": window.end and window.end.isoformat(),
            "sources": dict(Counter(window.sources.tolist())),
            "model_versions": dict(Counter(window.model_versions.tolist())),
        },
        reference_images=reference_images,
        drift=any(signal.drift for signal in signals) if signals else None,
        signals=tuple(signals),
        report=report,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
