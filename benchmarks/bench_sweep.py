"""Sweep wall time: four trials on a Dask LocalCluster of N single-threaded workers against the same
four trials one after another in one process (TensorFlow free to use every core). Prints a Markdown table.

    python benchmarks/bench_sweep.py                               # synthetic data, 5,000 training images
    python benchmarks/bench_sweep.py --source data/cache/cifar-10-python.tar.gz --epochs 2

Each mode gets a fresh data directory (so nothing is cached between them) and its own sweep flow
run on Prefect's temporary server; the time is the whole flow: ingest + preprocess (a few seconds),
cluster start-up (parallel only), the trials, and the four reports and leaderboard.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect and TensorFlow are imported

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="a cifar-10-python.tar.gz (default: a synthetic archive)")
    parser.add_argument("--per-batch", type=int, default=1000, help="synthetic images per training batch file (×5)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rates", default="0.001,0.0005")
    parser.add_argument("--batch-sizes", default="32,64")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    from cifarflow.config import PipelineConfig
    from flows.sweep_flow import cifar_sweep
    from tests.synthetic import write_archive

    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    if args.source:
        source, data = Path(args.source), f"`{Path(args.source).name}`"
    else:
        source = write_archive(root / "cifar-10-python.tar.gz", per_batch=args.per_batch, test_size=1000)
        data = f"synthetic, {5 * args.per_batch:,} train / 1,000 test images"
    grid = {
        "learning_rate": [float(v) for v in args.learning_rates.split(",")],
        "batch_size": [int(v) for v in args.batch_sizes.split(",")],
    }
    space = {"name": "bench", "base": {"epochs": args.epochs}, "grid": grid}
    modes = [
        ("sequential (one process, TF on all cores)", {"sequential": True}),
        (f"Dask LocalCluster, {args.workers} workers × 1 thread", {"n_workers": args.workers}),
    ]
    rows = []
    for label, options in modes:
        config = PipelineConfig(source=str(source), data_dir=root / f"data-{len(rows)}", rows_per_shard=10_000)
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # Keras progress bars: keep stdout for the table
            summary = cifar_sweep(config=config, space=space, **options)
        wall = time.perf_counter() - started
        trials = summary["trials"]
        assert all(t["status"] == "completed" for t in trials), trials
        rows.append(
            (
                label,
                len(trials),
                wall,
                sum(t["train_seconds"] for t in trials),
                max(t["test_accuracy"] for t in trials),
            )
        )
        print(f"{label}: {wall:.1f} s", file=sys.stderr)

    base = rows[0][2]
    print(f"\n### Sweep of {rows[0][1]} trials (seed model, {args.epochs} epochs, lr × batch {grid})\n")
    print(f"Data: {data}. Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}.\n")
    print("| mode | trials | wall time (s) | sum of trial train times (s) | speed-up | best test accuracy |")
    print("|---|---|---|---|---|---|")
    for label, n, wall, train, best in rows:
        print(f"| {label} | {n} | {wall:.1f} | {train:.1f} | {base / wall:.2f}× | {best:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
