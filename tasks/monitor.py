"""Tasks of the monitor flow (flows/monitor_flow.py): the window, the reference, the verdict, the report."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cifarflow.layout import DataLayout
from cifarflow.monitoring.embedding import load_embedder, load_scored, score
from cifarflow.monitoring.log import compact_days, delete_older, read_window
from cifarflow.monitoring.monitor import (
    MAX_IMAGES,
    MonitorSummary,
    WindowBounds,
    build_reference,
    remember_window,
    summarize,
    window_bounds,
)
from cifarflow.monitoring.report import write_monitor_report
from cifarflow.monitoring.signals import MIN_WINDOW, drift_signals
from cifarflow.orchestration.artifacts import publish_monitor
from cifarflow.orchestration.events import MONITOR_DRIFT, emit_monitor_drift
from cifarflow.paths import printable
from cifarflow.registry.versions import Version


@task(name="choose-window", cache_policy=NO_CACHE)
def choose_window(layout: DataLayout, last: int | None, since: datetime | None, now: datetime) -> WindowBounds:
    """The window's bounds: after the previous run's window unless `last` or `since` say otherwise."""
    return window_bounds(layout, last, since, now, warn=get_run_logger().warning)


@task(name="reference", cache_policy=NO_CACHE)  # kept on disk per model and test set (monitor.reference_file)
def prepare_reference(layout: DataLayout, champion: Version) -> Path:
    """The champion's features and probabilities on the test set: scored once, then read from disk."""
    path = build_reference(layout, champion, warn=get_run_logger().warning)
    get_run_logger().info("reference: %s", printable(path))
    return path


@task(name="check-window", cache_policy=NO_CACHE)  # the log grows between runs
def check_window(
    layout: DataLayout, champion: Version, reference: Path, bounds: WindowBounds, out: Path
) -> MonitorSummary:
    """Read the window, score it with the champion, compute the signals, write the report folder `out`."""
    logger = get_run_logger()
    window = read_window(layout.prediction_log, bounds.since, bounds.last or MAX_IMAGES, bounds.until, logger.warning)
    logger.info("window: %d logged images", len(window))
    baseline = load_scored(reference)
    scored = score(load_embedder(champion.preset, champion.model_path), window.pixels) if len(window) else None
    signals = drift_signals(baseline, scored) if len(window) >= MIN_WINDOW else []
    result = summarize(window, bounds, champion, len(baseline), signals, printable(out))
    write_monitor_report(out, result, baseline, scored, list(champion.record.label_names))
    logger.info("%s", result.verdict)
    return result


@task(name="publish-monitor", cache_policy=NO_CACHE)
def publish_monitor_artifacts(result: MonitorSummary, out: Path) -> None:
    publish_monitor(result, out)


@task(name="emit-drift", cache_policy=NO_CACHE)
def emit_drift(data_dir: Path, result: MonitorSummary) -> None:
    """`cifar10.monitor.drift` to the Prefect server, for automations to act on."""
    emit_monitor_drift(printable(data_dir), result)
    get_run_logger().warning("drift: %s; event %s emitted", ", ".join(result.fired), MONITOR_DRIFT)


@task(name="remember-window", cache_policy=NO_CACHE)
def remember_where_it_ended(layout: DataLayout, bounds: WindowBounds, images: int) -> None:
    """The next incremental run starts after this window (unless it was too small to judge)."""
    if not remember_window(layout, bounds, images) and bounds.incremental:
        get_run_logger().info("the window stays open until it holds %d images", MIN_WINDOW)


@task(name="prune-log", cache_policy=NO_CACHE)
def prune_log(layout: DataLayout, keep_days: int, now: datetime) -> int:
    """Delete the prediction log's days older than `keep_days` and merge each finished day's files into
    one; how many day folders were deleted."""
    logger = get_run_logger()
    deleted = delete_older(layout.prediction_log, keep_days, now.date())
    if deleted:
        logger.info("deleted %d days of the prediction log older than %d days", len(deleted), keep_days)
    merged = compact_days(layout.prediction_log, now.date(), warn=logger.warning)
    if merged:
        logger.info("merged the files of %d finished days of the prediction log", len(merged))
    return len(deleted)
