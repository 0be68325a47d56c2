"""One monitor run's pieces: which logged images form the window, the reference they are compared with,
and the verdict as monitor.json holds it.

The **window** is the logged images in (since, until]: by default since where the previous run's window
ended (`monitoring/state.json`; the whole log on a first run), or the `last` N, and at most `max_images`
of the most recent. It ends `SETTLE_S` seconds before the run starts, so rows still waiting in a
writer's one-second buffer belong to the next window instead of being skipped.

The **reference** is the champion's view of the test set (held out: the champion never trained on it),
scored once per model and test set and kept under `monitoring/references/`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cifarflow.data.shards import read_split
from cifarflow.errors import PipelineInputError
from cifarflow.files import read_json, text_digest, write_json
from cifarflow.layout import DataLayout
from cifarflow.monitoring.embedding import load_embedder, save_scored, score
from cifarflow.monitoring.log import FLUSH_S, LogWindow
from cifarflow.monitoring.signals import FAMILY_ALPHA, MIN_WINDOW, Signal
from cifarflow.outputs import read_whole
from cifarflow.registry.versions import Version

SETTLE_S = 2 * FLUSH_S
MAX_IMAGES = 10_000


@dataclass(frozen=True)
class WindowBounds:
    """(since, until]: UTC; `since` None is the log's beginning; `last`: only the most recent N."""

    since: datetime | None
    until: datetime
    last: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since and self.since.isoformat(), "until": self.until.isoformat(), "last": self.last}


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC. PipelineInputError for anything else."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise PipelineInputError(f"--since {text!r} is not an ISO 8601 time (e.g. 2026-11-30T08:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def window_bounds(layout: DataLayout, last: int | None, since: datetime | None, now: datetime) -> WindowBounds:
    """The window a run looks at (see the module docstring)."""
    until = now - timedelta(seconds=SETTLE_S)
    if since is None and last is None:
        previous = read_whole(lambda: read_json(layout.monitor_state)["until"])
        since = datetime.fromisoformat(previous) if isinstance(previous, str) else None
    return WindowBounds(since, until, last)


def remember_window(layout: DataLayout, bounds: WindowBounds) -> None:
    """Where this run's window ended, so that the next run starts there."""
    write_json(layout.monitor_state, {"until": bounds.until.isoformat()})


def reference_file(layout: DataLayout, version: Version) -> Path:
    """Where `version`'s reference lives: named by the model file's and the test shards' digests."""
    test_shards = read_json(layout.shard_manifest)["splits"]["test"]["shards"]
    test_set = text_digest([shard["sha256"] for shard in test_shards])
    return layout.monitor_references / f"{version.model_id[:16]}-{test_set[:12]}" / "reference.npz"


def build_reference(layout: DataLayout, version: Version) -> Path:
    """The reference for `version` (scored now unless already on disk): its features, probabilities and
    pixel counts on the test set. PipelineInputError when the data dir has no ingested test set."""
    if not layout.shard_manifest.is_file():
        raise PipelineInputError(
            f"no test set in {layout.root} to compare with: the reference is the ingested test split "
            "(run the pipeline on this data dir first)"
        )
    path = reference_file(layout, version)
    if not path.is_file():
        images, _ = read_split(layout.shard_manifest, "test")
        save_scored(path, score(load_embedder(version.preset, version.model_path), images))
    return path


def summary(
    window: LogWindow, bounds: WindowBounds, version: Version, reference_images: int, signals: list[Signal]
) -> dict[str, Any]:
    """monitor.json: the window, the model, the verdict (`drift` None without one) and every signal."""
    enough = len(window) >= MIN_WINDOW
    fired = [s.name for s in signals if s.drift]
    return {
        "images": len(window),
        "model_version": version.name,
        "window": bounds.to_json()
        | {
            "first": window.start and window.start.isoformat(),
            "last_logged": window.end and window.end.isoformat(),
            "sources": dict(Counter(window.sources.tolist())),
            "model_versions": dict(Counter(window.model_versions.tolist())),
        },
        "reference": {"what": "the ingested test set, scored by the champion", "images": reference_images},
        "drift": (bool(fired) if enough else None),
        "verdict": verdict(len(window), fired),
        "family_alpha": FAMILY_ALPHA,
        "signals": {s.name: s.to_json() for s in signals},
        "fired": fired,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def verdict(images: int, fired: list[str]) -> str:
    if images < MIN_WINDOW:
        return f"no verdict: {images} images in the window, fewer than {MIN_WINDOW}"
    return f"drift: {', '.join(fired)}" if fired else "no drift"
