"""Drift monitoring: what the champion was asked lately, against held-out data it did not train on.

    python flows/monitor_flow.py                          # since the previous monitor run
    python flows/monitor_flow.py --last 5000              # the 5,000 most recent logged images
    python flows/monitor_flow.py --since 2026-11-30T08:00Z --data-dir /srv/cifar --keep-days 7

The window is read from the prediction log (<data dir>/monitoring/log/, written by the service and
the predict flow): every logged row no earlier run judged, however late it reached the log (judged
by file: `cifarflow.monitoring.monitor`; a window too small to judge stays open for the next run; one
over --max-images is judged on a random sample of that many), or the last N, or since a time (UTC when
no zone is given): those two only look. One monitor run at a time per data dir (a second waits); a run
finishes or undoes what a killed one left, and says which. The reference is the test
set, scored by the champion once per model. Four signals (input PSI, embedding MMD, prediction
chi-square, confidence KS: `cifarflow.monitoring.signals`) give the verdict; a window of fewer than 100
images gets none. The report lands in <data dir>/monitoring/reports/<time>/ (monitor.json, report.md,
plots) and in the Prefect UI; on drift the flow emits the event `cifar10.monitor.drift`. Log days older
than --keep-days are deleted. The last line is `done: monitoring report at <dir>`.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect is imported

import argparse
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow

from cifarflow.cli import ArgumentParser, done, ensure_prefect_api, run_cli, run_command
from cifarflow.errors import PipelineInputError
from cifarflow.inference.predictor import locate
from cifarflow.layout import DataLayout
from cifarflow.lock import data_dir_lock
from cifarflow.monitoring.log import KEEP_DAYS
from cifarflow.monitoring.monitor import MAX_IMAGES, MonitorSummary, parse_time, test_shards
from cifarflow.monitoring.signals import MIN_WINDOW
from cifarflow.orchestration.names import run_name
from cifarflow.paths import from_printable, printable
from cifarflow.registry import store
from tasks.monitor import (
    begin,
    check_window,
    choose_window,
    commit_window,
    emit_drift,
    open_bookmark,
    prepare_reference,
    prune_log,
    publish_monitor_artifacts,
)


@flow(name="monitor", flow_run_name=run_name("monitor", "data_dir", "data"), log_prints=True)
def monitor(
    data_dir: Path = Path("data"),
    last: int | None = None,
    since: str | None = None,
    keep_days: int = KEEP_DAYS,
    max_images: int = MAX_IMAGES,
) -> MonitorSummary:
    """Compare a window of the prediction log with the champion's reference; the verdict."""
    layout = DataLayout(Path(from_printable(str(data_dir))).resolve())
    champion = store.read_champion_version(layout.registry)
    if champion is None:
        raise PipelineInputError(f"no champion in {layout.registry}: run the pipeline first")
    incremental = last is None and since is None  # --last and --since only look: they never touch the state
    with data_dir_lock(layout.monitor_lock, log=print, holder_kind="monitor run"):
        now = datetime.now(UTC)
        out = layout.monitor_reports / f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
        state, notes = open_bookmark(layout, now, keep_days) if incremental else (None, [])  # a killed run: done
        bounds = choose_window(layout, state, last, parse_time(since) if since else None, now)  # files not judged
        if incremental:
            begin(layout, out, bounds)  # the run's journal
        reference = prepare_reference(layout, champion)  # the champion's view of the test set
        result = check_window(layout, champion, reference, bounds, out, state, notes, max_images)  # the report
        publish_monitor_artifacts(result, out)
        if result.drift:
            emit_drift(layout, result, incremental)  # cifar10.monitor.drift, for automations
        if incremental:
            commit_window(layout, state, result, bounds, now)  # the window's files judged
        prune_log(layout, keep_days, now, state)  # retention, and finished days' judged files merged
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the pipeline's data directory")
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--last", type=int, metavar="N", help="the N most recent logged images")
    window.add_argument("--since", metavar="ISO-TIME", help="the images logged after this time (UTC if no zone)")
    parser.add_argument(
        "--keep-days",
        type=int,
        default=KEEP_DAYS,
        help=f"delete prediction-log days older than this (default {KEEP_DAYS})",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=MAX_IMAGES,
        help=f"judge a bigger window on a random sample of this many images (default {MAX_IMAGES:,})",
    )
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Unusable arguments raise PipelineInputError (exit 2) before any flow starts."""
    if args.last is not None and args.last < 1:
        raise PipelineInputError(f"--last must be at least 1, got {args.last}")
    if args.max_images < MIN_WINDOW:
        raise PipelineInputError(f"--max-images must be at least {MIN_WINDOW} (the smallest window judged)")
    if args.keep_days < 1:
        raise PipelineInputError(f"--keep-days must be at least 1, got {args.keep_days}")
    if args.since is not None and parse_time(args.since) > datetime.now(UTC):
        raise PipelineInputError(f"--since {args.since} is in the future: nothing is logged after it yet")
    layout = DataLayout(args.data_dir.resolve())
    locate(store.ALIAS, layout.registry)  # ModelNotFound: no champion yet
    test_shards(layout)  # the reference: PipelineInputError when the data dir has no test set


def run_monitor(args: argparse.Namespace, _: None) -> int:
    ensure_prefect_api()
    result = monitor(printable(args.data_dir.resolve()), args.last, args.since, args.keep_days, args.max_images)
    for note in result.notes:
        print(f"note: {note}")
    print(f"{result.verdict} ({result.images:,} images, {result.model_version})")
    return done(f"monitoring report at {result.report}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), check_arguments, run_monitor, argv, what="the monitor")


if __name__ == "__main__":
    sys.exit(run_command(main))
