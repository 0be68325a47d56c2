"""Tasks of the monitor flow (flows/monitor_flow.py): the bookmark, the window, the reference, the verdict,
the report, the commit."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cifarflow import journal
from cifarflow.layout import DataLayout
from cifarflow.monitoring.drift_report import write_monitor_report
from cifarflow.monitoring.embedding import load_embedder, load_scored, score
from cifarflow.monitoring.log import delete_older, read_window
from cifarflow.monitoring.monitor import (
    MAX_IMAGES,
    MonitorState,
    MonitorSummary,
    WindowBounds,
    begin_run,
    build_reference,
    drift_emitted,
    end_run,
    merge_judged,
    odd_bookmark,
    read_state,
    read_unjudged,
    resume_merge,
    resume_run,
    summarize,
    unjudged_files,
    window_bounds,
    write_state,
)
from cifarflow.monitoring.signals import MIN_WINDOW, drift_signals
from cifarflow.orchestration.artifacts import publish_monitor
from cifarflow.orchestration.events import MONITOR_DRIFT, emit_monitor_drift
from cifarflow.paths import printable
from cifarflow.registry.model_versions import Version


@task(name="open-bookmark", cache_policy=NO_CACHE)
def open_bookmark(layout: DataLayout, now: datetime, keep_days: int) -> tuple[MonitorState, list[str]]:
    """Which log files are judged, after finishing or undoing what a killed run left; what was odd."""
    logger = get_run_logger()
    notes: list[str] = []
    state = read_state(layout, warn=notes.append)
    for done in (resume_run(layout, state, lambda summary: emit(layout.root, summary)), resume_merge(layout, state)):
        notes += [done] if done else []
    notes += odd_bookmark(layout, state, now, keep_days)
    write_state(layout, state)  # gone files forgotten, a state of the earlier form written anew
    for note in notes:
        logger.warning("%s", note)
    return state, notes


@task(name="choose-window", cache_policy=NO_CACHE)
def choose_window(
    layout: DataLayout, state: MonitorState | None, last: int | None, since: datetime | None, now: datetime
) -> WindowBounds:
    """The log files no incremental run judged, unless `last` or `since` ask for a look."""
    return window_bounds(last, since, now, unjudged_files(layout, state) if state else ())


@task(name="begin-run", cache_policy=NO_CACHE)
def begin(layout: DataLayout, out: Path, bounds: WindowBounds) -> None:
    """The run's journal, before its report: a kill from here on is finished or undone by the next run."""
    begin_run(layout, out, bounds.files)


@task(name="reference", cache_policy=NO_CACHE)  # kept on disk per model and test set (monitor.reference_file)
def prepare_reference(layout: DataLayout, champion: Version) -> Path:
    """The champion's features and probabilities on the test set: scored once, then read from disk."""
    path = build_reference(layout, champion, warn=get_run_logger().warning)
    get_run_logger().info("reference: %s", printable(path))
    return path


@task(name="check-window", cache_policy=NO_CACHE)  # the log grows between runs
def check_window(
    layout: DataLayout,
    champion: Version,
    reference: Path,
    bounds: WindowBounds,
    out: Path,
    state: MonitorState | None,
    notes: list[str],
    max_images: int = MAX_IMAGES,
) -> MonitorSummary:
    """Read the window's pixels (not the logged probabilities: rows served by a model with another label
    set are judged too), score them with the champion, compute the signals, write the report folder `out`."""
    logger = get_run_logger()
    if bounds.incremental:
        window, times, found = read_unjudged(layout, bounds.files, state, max_images, logger.warning)
        for note in found:
            logger.warning("%s", note)
        notes = [*notes, *found]
    else:
        window = read_window(
            layout.prediction_log, bounds.since, bounds.last or max_images, bounds.until, logger.warning, False
        )
        times = window.times
    logger.info("window: %d logged images", len(window))
    baseline = load_scored(reference)
    scored = score(load_embedder(champion.preset, champion.model_path), window.pixels) if len(window) else None
    signals = drift_signals(baseline, scored) if len(window) >= MIN_WINDOW else []
    result = summarize(window, times, bounds, champion, len(baseline), signals, printable(out), notes)
    write_monitor_report(out, result, baseline, scored, list(champion.record.label_names))
    logger.info("%s", result.verdict)
    return result


@task(name="publish-monitor", cache_policy=NO_CACHE)
def publish_monitor_artifacts(result: MonitorSummary, out: Path) -> None:
    publish_monitor(result, out)
    journal.kill_point("monitor:report-written")  # the report whole; its drift event and commit to come


def emit(data_dir: Path, summary: dict) -> None:
    emit_monitor_drift(printable(data_dir), summary)
    fired = [name for name, signal in summary["signals"].items() if signal["drift"]]
    get_run_logger().warning("drift: %s; event %s emitted", ", ".join(fired), MONITOR_DRIFT)


@task(name="emit-drift", cache_policy=NO_CACHE)
def emit_drift(layout: DataLayout, result: MonitorSummary, incremental: bool) -> None:
    """`cifar10.monitor.drift` to the Prefect server, for automations to act on; noted in the run's journal."""
    emit(layout.root, result.to_json())
    if incremental:
        drift_emitted(layout)


@task(name="commit-window", cache_policy=NO_CACHE)
def commit_window(
    layout: DataLayout, state: MonitorState, result: MonitorSummary, bounds: WindowBounds, now: datetime
) -> None:
    """The window's files count as judged (unless it was too small to judge: it stays open and grows)."""
    end_run(layout, state, result, bounds.files, now)
    if result.drift is None:
        get_run_logger().info("the window stays open until it holds %d images", MIN_WINDOW)


@task(name="prune-log", cache_policy=NO_CACHE)
def prune_log(layout: DataLayout, keep_days: int, now: datetime, state: MonitorState | None) -> int:
    """Delete the prediction log's days older than `keep_days` and (`state`: an incremental run) merge each
    finished day's judged files into one; how many day folders were deleted."""
    logger = get_run_logger()
    deleted = delete_older(layout.prediction_log, keep_days, now.date())
    if deleted:
        logger.info("deleted %d days of the prediction log older than %d days", len(deleted), keep_days)
    if state is not None:
        merged = merge_judged(layout, state, now.date(), warn=logger.warning)
        if merged:
            logger.info("merged the judged files of %d finished days of the prediction log", len(merged))
    return len(deleted)
