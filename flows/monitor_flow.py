"""Drift monitoring: a window of the prediction log against the champion's view of the test set.

    python flows/monitor_flow.py                          # the rows no earlier run judged
    python flows/monitor_flow.py --last 5000              # or only look: the 5,000 most recent
    python flows/monitor_flow.py --since 2026-11-30T08:00Z --data-dir /srv/cifar --keep-days 7

The report lands in <data dir>/monitoring/reports/<time>/; on drift the event `cifar10.monitor.drift`.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect is imported

import argparse
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow

from cifarflow.cli import ArgumentParser, done, ensure_prefect_api, run_cli
from cifarflow.errors import PipelineInputError
from cifarflow.inference.predictor import locate
from cifarflow.journal import begin
from cifarflow.layout import DataLayout
from cifarflow.lock import data_dir_lock
from cifarflow.monitoring.log import KEEP_DAYS, last_seq
from cifarflow.monitoring.monitor import MAX_IMAGES, MonitorSummary, WindowBounds, parse_time, test_shards
from cifarflow.monitoring.signals import MIN_WINDOW
from cifarflow.orchestration.names import run_name
from cifarflow.paths import from_printable, printable
from cifarflow.registry import store
from cifarflow.tracking import track_monitor
from tasks.monitor import check_window, commit_window, emit_drift, open_bookmark, prepare_reference, prune_log


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
        if incremental:
            state, notes = open_bookmark(layout, now)
            bounds = WindowBounds(None, now, after_seq=state.seq, upto_seq=last_seq(layout.prediction_log))
            # a kill from here on is finished or undone by the next run (monitor.resume_run)
            begin(layout.monitor_journal, {"report": out.name, "upto_seq": bounds.upto_seq, "emitted": False})
        else:
            state, notes = None, []
            bounds = WindowBounds(parse_time(since) if since else None, now, last)
        reference = prepare_reference(layout, champion)
        result = check_window(layout, champion, reference, bounds, out, state, notes, max_images)
        if result.drift:
            emit_drift(layout, result, incremental)
        if incremental:
            commit_window(layout, state, result, now)
        prune_log(layout, keep_days, now)
    track_monitor(layout, champion, result)  # an MLflow run, if installed
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the pipeline's data directory")
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--last", type=int, metavar="N", help="the N most recent logged images")
    window.add_argument("--since", metavar="ISO-TIME", help="the images logged after this time (UTC if no zone)")
    parser.add_argument("--keep-days", type=int, default=KEEP_DAYS, help="keep judged rows N days (%(default)s)")
    parser.add_argument("--max-images", type=int, default=MAX_IMAGES, help="judge more on a sample (%(default)s)")
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
    champion = locate(store.ALIAS, layout.registry)  # ModelNotFound: no champion yet
    test_shards(layout, champion)  # the reference: PipelineInputError without a test set of the champion's kind


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
    sys.exit(main())
