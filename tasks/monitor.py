"""Tasks of the monitor flow (flows/monitor_flow.py)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cifarflow import journal
from cifarflow.files import write_json
from cifarflow.layout import DataLayout
from cifarflow.monitoring import monitor
from cifarflow.monitoring.drift_report import write_monitor_report
from cifarflow.monitoring.embedding import load_embedder, load_scored, score
from cifarflow.monitoring.log import delete_older
from cifarflow.monitoring.signals import MIN_WINDOW, drift_signals
from cifarflow.orchestration.artifacts import publish_monitor
from cifarflow.orchestration.events import MONITOR_DRIFT, emit_monitor_drift
from cifarflow.paths import printable
from cifarflow.registry.store import Version


@task(name="open-bookmark", cache_policy=NO_CACHE)
def open_bookmark(layout: DataLayout, now: datetime) -> tuple[monitor.MonitorState, list[str]]:
    """The last judged seq, after finishing or undoing what a killed run left; what was odd."""
    notes: list[str] = []
    state = monitor.read_state(layout, warn=notes.append)
    done = monitor.resume_run(layout, state, lambda summary: emit(layout.root, summary))
    notes += [done] if done else []
    notes += monitor.odd_bookmark(layout, state, now)
    write_json(layout.monitor_state, state.to_json())  # a damaged state written anew
    for note in notes:
        get_run_logger().warning("%s", note)
    return state, notes


@task(name="reference", cache_policy=NO_CACHE)  # kept on disk per model and test set (monitor.build_reference)
def prepare_reference(layout: DataLayout, champion: Version) -> Path:
    """The champion's features and probabilities on the test set: scored once, then read from disk."""
    path = monitor.build_reference(layout, champion, warn=get_run_logger().warning)
    get_run_logger().info("reference: %s", printable(path))
    return path


@task(name="check-window", cache_policy=NO_CACHE)  # the log grows between runs
def check_window(
    layout: DataLayout,
    champion: Version,
    reference: Path,
    bounds: monitor.WindowBounds,
    out: Path,
    state: monitor.MonitorState | None,
    notes: list[str],
    max_images: int = monitor.MAX_IMAGES,
) -> monitor.MonitorSummary:
    """Score the window's pixels with the champion, compute the signals, write the report folder `out`."""
    logger = get_run_logger()
    window, times, found = monitor.read_bounds(layout, bounds, state, max_images, champion.side)
    for note in found:
        logger.warning("%s", note)
    baseline = load_scored(reference)
    pixels = np.stack([row.pixels for row in window]) if window else None
    scored = score(load_embedder(champion.preset, champion.model_path), pixels) if window else None
    signals = drift_signals(baseline, scored) if len(window) >= MIN_WINDOW else []
    moment = lambda t: t.astype(datetime).replace(tzinfo=UTC).isoformat()  # noqa: E731
    result = monitor.MonitorSummary(
        images=len(window),
        model_version=champion.name,
        window=bounds.to_json()
        | {
            "rows": len(times),
            "first": moment(times.min()) if len(times) else None,
            "last_logged": moment(times.max()) if len(times) else None,
            "sources": dict(Counter(row.source for row in window)),
            "model_versions": dict(Counter(row.model_version for row in window)),
        },
        reference_images=len(baseline),
        drift=any(signal.drift for signal in signals) if signals else None,
        signals=tuple(signals),
        report=printable(out),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        notes=(*notes, *found),
    )
    write_monitor_report(out, result, baseline, scored, list(champion.label_names))
    logger.info("%s", result.verdict)
    publish_monitor(result, out)
    journal.kill_point("monitor:report-written")  # the report whole; its drift event and commit to come
    return result


def emit(data_dir: Path, summary: dict) -> None:
    emit_monitor_drift(printable(data_dir), summary)
    fired = [name for name, signal in summary["signals"].items() if signal["drift"]]
    get_run_logger().warning("drift: %s; event %s emitted", ", ".join(fired), MONITOR_DRIFT)


@task(name="emit-drift", cache_policy=NO_CACHE)
def emit_drift(layout: DataLayout, result: monitor.MonitorSummary, incremental: bool) -> None:
    """`cifar10.monitor.drift` to the Prefect server, for automations to act on; noted in the run's journal."""
    emit(layout.root, result.to_json())
    if incremental:
        record = journal.unfinished(layout.monitor_journal) or {}
        journal.begin(layout.monitor_journal, record | {"emitted": True})


@task(name="commit-window", cache_policy=NO_CACHE)
def commit_window(
    layout: DataLayout, state: monitor.MonitorState, result: monitor.MonitorSummary, now: datetime
) -> None:
    """The incremental window's rows count as judged (unless it was too small to judge: it stays open and grows)."""
    if result.drift is None:
        get_run_logger().info("the window stays open until it holds %d images", MIN_WINDOW)
        monitor.commit(layout, state, state.seq, None, now)
    else:
        monitor.commit(layout, state, result.window["seqs"][1], result.window["last_logged"], now)
    journal.end(layout.monitor_journal)


@task(name="prune-log", cache_policy=NO_CACHE)
def prune_log(layout: DataLayout, keep_days: int, now: datetime) -> int:
    """Delete the judged rows of the prediction log scored more than `keep_days` days ago; how many."""
    logger = get_run_logger()
    deleted = delete_older(layout.prediction_log, keep_days, monitor.read_state(layout, logger.warning).seq, now)
    logger.info("deleted %d judged rows of the prediction log older than %d days", deleted, keep_days)
    return deleted
