"""Drift monitoring, measured: how often each signal fires on clean windows and on shifted ones, and how
long the monitor flow takes on a 10,000-image window.

    python benchmarks/bench_monitor.py --data-dir data --out benchmarks/monitor.md
    python benchmarks/bench_monitor.py --data-dir data --model v2 --windows 20 --skip-speed

Needs a data dir with an ingested test set and a trained model in its registry (`make run`).

1. Detection quality. The test set is split into two fixed halves (a seeded permutation): the reference
   is one half, scored by the model; each window is `--window-size` images drawn from the other half, so
   a clean window never overlaps the reference. Per scenario, `--windows` windows (each its own seed):
   clean; each image corruption of `cifarflow.data.corruptions` at its default severity; and a class
   flood (60% of the window from one class, by true label, the class changing from window to window).
   The table gives, per scenario, in how many windows each signal fired and the monitor's verdict
   (`drift`: any signal, Bonferroni-corrected). Target: at most 1 in 20 clean windows flagged; at least 19
   in 20 of every shift.
2. Speed. 10,000 test images (no corruption) written to the prediction log of a scratch data dir that
   links the real one's test set and copies its registry with the measured model as champion, then
   `flows/monitor_flow.py` run on it twice: cold (the reference is scored first) and warm (the
   reference read from disk). Wall seconds of the whole command.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect and TensorFlow are imported

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cifarflow.data.corruptions import CORRUPTIONS, corrupt
from cifarflow.data.shards import read_split
from cifarflow.inference.predictor import locate
from cifarflow.layout import DataLayout
from cifarflow.monitoring.embedding import load_embedder, score
from cifarflow.monitoring.log import PredictionLog, new_ids
from cifarflow.monitoring.signals import SIGNAL_NAMES, drift_signals

REPO_ROOT = Path(__file__).resolve().parents[1]
FLOOD_SHARE = 0.6
SPLIT_SEED = 20261130


def halves(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Two fixed, disjoint halves of range(count): (reference indices, window pool indices)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(count)
    return np.sort(order[: count // 2]), np.sort(order[count // 2 :])


def window_images(pool: np.ndarray, labels: np.ndarray, scenario: str, size: int, seed: int) -> np.ndarray:
    """`size` images of the pool for `scenario` (clean, a corruption's name, or class_flood)."""
    rng = np.random.default_rng(seed)
    if scenario == "class_flood":
        flooded = seed % 10
        of_class = np.flatnonzero(labels == flooded)
        flood = rng.choice(of_class, round(FLOOD_SHARE * size), replace=False)
        rest = rng.choice(np.setdiff1d(np.arange(len(pool)), flood), size - len(flood), replace=False)
        return pool[np.concatenate([flood, rest])]
    images = pool[rng.choice(len(pool), size, replace=False)]
    return images if scenario == "clean" else corrupt(images, scenario, seed=seed)


def detection(embed, images: np.ndarray, labels: np.ndarray, windows: int, size: int) -> list[dict]:
    reference_at, pool_at = halves(len(images))
    reference = score(embed, images[reference_at])
    pool, pool_labels = images[pool_at], labels[pool_at]
    rows = []
    for scenario in ("clean", *CORRUPTIONS, "class_flood"):
        fired = {name: 0 for name in (*SIGNAL_NAMES, "drift")}
        started = time.perf_counter()
        for number in range(windows):
            signals = drift_signals(reference, score(embed, window_images(pool, pool_labels, scenario, size, number)))
            for signal in signals:
                fired[signal.name] += signal.drift
            fired["drift"] += any(signal.drift for signal in signals)
        severity = CORRUPTIONS[scenario].severity if scenario in CORRUPTIONS else ""
        rows.append({"scenario": scenario, "severity": severity, **fired, "seconds": time.perf_counter() - started})
        print(f"{scenario}: {fired} ({rows[-1]['seconds']:.1f} s)", flush=True)
    return rows


def scratch_data_dir(data_dir: Path, root: Path, version: str) -> Path:
    """A data dir sharing `data_dir`'s test set (a link), with a copy of its registry whose champion is
    `version`, and an empty monitoring folder."""
    import shutil

    from cifarflow.registry import store

    scratch = root / "data"
    scratch.mkdir(parents=True)
    (scratch / "parquet").symlink_to((data_dir / "parquet").resolve())
    shutil.copytree(data_dir / "registry", scratch / "registry", symlinks=True)
    store.move_alias(scratch / "registry", version, by="benchmark", reason="bench_monitor: the model measured")
    return scratch


def speed(data_dir: Path, images: np.ndarray, version: str, count: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as root:
        scratch = scratch_data_dir(data_dir, Path(root), version)
        window = images[np.random.default_rng(1).choice(len(images), count, replace=False)]
        probabilities = np.full((count, 10), 0.1, np.float32)
        with PredictionLog(DataLayout(scratch).prediction_log) as log:
            for start in range(0, count, 500):
                end = start + 500
                log.append(
                    new_ids(len(window[start:end])), "service", version, probabilities[start:end], window[start:end]
                )
        env = os.environ | {"PREFECT_HOME": str(Path(root) / "prefect-home")}
        timings = {}
        for run in ("cold", "warm"):
            command = [sys.executable, "flows/monitor_flow.py", "--data-dir", str(scratch), "--last", str(count)]
            started = time.perf_counter()
            finished = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
            timings[run] = time.perf_counter() - started
            last_line = finished.stdout.strip().splitlines()[-1] if finished.stdout.strip() else finished.stderr[-500:]
            print(f"monitor, {run}: {timings[run]:.1f} s: {last_line}", flush=True)
            if finished.returncode != 0:
                raise SystemExit(
                    f"error: the monitor flow failed:\n{finished.stdout[-2000:]}\n{finished.stderr[-2000:]}"
                )
        return timings


def markdown(model: str, preset: str, rows: list[dict], windows: int, size: int, timings: dict | None) -> str:
    header = "| shift | severity | input (PSI) | embedding (MMD) | prediction (χ²) | confidence (KS) | **drift** |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = " | ".join(f"{row[name]}/{windows}" for name in SIGNAL_NAMES)
        lines.append(f"| {row['scenario']} | {row['severity']} | {cells} | **{row['drift']}/{windows}** |")
    text = (
        f"# Drift monitoring, measured\n\n{datetime.now(UTC):%Y-%m-%d}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; model {model} (`{preset}`); windows of {size} images, {windows} per shift, "
        "from the test half the reference does not hold.\n\n" + "\n".join(lines) + "\n"
    )
    if timings:
        text += (
            f"\nMonitor flow on a 10,000-image window (`--last 10000`), whole command: cold (reference scored) "
            f"{timings['cold']:.1f} s, warm {timings['warm']:.1f} s.\n"
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--model", default="champion", help="champion (default) or a version")
    parser.add_argument("--windows", type=int, default=20, help="windows per shift")
    parser.add_argument("--window-size", type=int, default=500)
    parser.add_argument("--speed-images", type=int, default=10_000)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args()
    layout = DataLayout(args.data_dir.resolve())
    version = locate(args.model, layout.registry)
    images, labels = read_split(layout.shard_manifest, "test")
    embed = load_embedder(version.preset, version.model_path)
    rows = detection(embed, images, labels, args.windows, args.window_size)
    timings = None if args.skip_speed else speed(layout.root, images, version.name, args.speed_images)
    text = markdown(version.name, version.preset, rows, args.windows, args.window_size, timings)
    print(text)
    if args.out:
        args.out.write_text(text)
    print(f"done: detection table{' and speed' if timings else ''} for {version.name}")


if __name__ == "__main__":
    main()
