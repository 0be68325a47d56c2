"""A labeled image folder's ingest on the full CIFAR-10 JPEG copy (60,000 files), beside its floor in the same run.

    python benchmarks/bench_ingest.py [--jpeg-copy ../shared/datasets/cifar10-jpeg.tar.gz] [--rounds 2]

1. Speed: `ingest_folder` of the extracted folder (every core, shards written) against the floor of only decoding
   the same files with Pillow in one process, alternated round by round; images per second and the ratio.
2. Memory: peak RSS (the largest of the process and its workers) of ingesting the 60,000-file folder and the same
   folder repeated 4× as hard links (240,000 files): it must not grow with the folder (within 20 %) and stay < 1 GB.
3. The cached identity of the unchanged folder (every file's digest from the memo) against the archive source's.
4. With --rerun: the whole pipeline re-run with nothing changed (every stage Cached) on the 60,000-file folder against
   the same on the official-layout archive built from the copy, alternated after one cold run of each (--epochs 1).
Each measurement runs in a fresh process (`--measure`), so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
JPEG_COPY = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def measure(kind: str, folder: Path) -> dict:
    """In this process: run one measurement, return seconds, images and peak RSS in MB."""
    started = time.perf_counter()
    if kind == "floor":
        files = sorted(path for path in folder.rglob("*") if path.is_file())
        for path in files:
            with Image.open(path) as image:
                np.asarray(image.convert("RGB"))
        images = len(files)
    else:
        from cifarflow.data.folder import ingest_folder

        with tempfile.TemporaryDirectory(dir=folder.parent) as staging:
            found = ingest_folder(folder, Path(staging), 32, 1 / 6, 0, 10_000, lambda _: None, None)
        images = sum(entry["rows"] for entries in found["shards"].values() for entry in entries)
    seconds = time.perf_counter() - started
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {"seconds": seconds, "images": images, "rss_mb": peak / 1024}


def run_measure(kind: str, folder: Path) -> dict:
    command = [sys.executable, __file__, "--measure", kind, str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def repeated(folder: Path, times: int, out: Path) -> Path:
    """`folder` with every file hard-linked `times` times under other names (the same layout and classes)."""
    for path in folder.rglob("*.jpg"):
        target = out / path.parent.relative_to(folder)
        target.mkdir(parents=True, exist_ok=True)
        for copy in range(times):
            os.link(path, target / f"r{copy}-{path.name}")
    return out


def identity_seconds(source: Path, memo: Path, root: Path) -> float:
    """Seconds of `folder_identity` with a warm memo (run once before, unchanged since)."""
    from cifarflow.data.folder import folder_identity

    folder_identity(source, memo, root)
    started = time.perf_counter()
    folder_identity(source, memo, root)
    return time.perf_counter() - started


def cached_reruns(folder: Path, jpeg_copy: Path, work: Path, rounds: int) -> dict[str, list[float]]:
    """Seconds of `flows/cifar_flow.py` re-runs with nothing changed, per source, alternated (a cold run of each
    first, classic preset, one epoch), each in a fresh process on Prefect's temporary server."""
    archive = work / "cifar-10-python.tar.gz"
    builder = jpeg_copy.parent / "make_cifar10_archive.py"
    subprocess.run([sys.executable, str(builder), str(jpeg_copy), str(archive)], check=True, capture_output=True)
    env = os.environ | {"PREFECT_HOME": str(work / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    sources = {"folder": folder, "archive": archive}
    seconds: dict[str, list[float]] = {name: [] for name in sources}
    for attempt in range(rounds + 1):
        for name, source in sources.items():
            command = [sys.executable, "flows/cifar_flow.py", "--source", str(source), "--epochs", "1"]
            started = time.perf_counter()
            run = subprocess.run(
                [*command, "--data-dir", str(work / f"data-{name}")], cwd=REPO, env=env, text=True, capture_output=True
            )
            if run.returncode != 0:
                raise RuntimeError(f"{name}: {run.stdout[-2000:]}")
            if attempt:  # the first is the cold run
                seconds[name].append(time.perf_counter() - started)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jpeg-copy", type=Path, default=JPEG_COPY)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rerun", action="store_true", help="also time cached pipeline re-runs, folder vs archive")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        folder = work / "cifar10"
        with tarfile.open(args.jpeg_copy) as tar:
            tar.extractall(folder, filter="data")
        load = os.getloadavg()[0]
        print(f"{os.cpu_count()} cores (load {load:.1f}); {sum(1 for p in folder.rglob('*.jpg'))} files in {folder}")
        runs: dict[str, list[dict]] = {"floor": [], "ingest": []}
        for number in range(args.rounds):
            for kind in runs:
                runs[kind].append(result := run_measure(kind, folder))
                rate = result["images"] / result["seconds"]
                print(
                    f"round {number + 1} {kind:6}: {result['seconds']:6.1f} s  {rate:7.0f} images/s  "
                    f"peak RSS {result['rss_mb']:5.0f} MB"
                )
        rates = {kind: max(r["images"] / r["seconds"] for r in results) for kind, results in runs.items()}
        ratio = rates["ingest"] / rates["floor"]
        print(
            f"best: floor {rates['floor']:.0f} images/s, ingest {rates['ingest']:.0f} images/s: {ratio:.2f}× the floor"
        )
        big = run_measure("ingest", repeated(folder, 4, work / "cifar10x4"))
        small_rss = max(r["rss_mb"] for r in runs["ingest"])
        growth = big["rss_mb"] / small_rss - 1
        print(
            f"peak RSS: 60,000 files {small_rss:.0f} MB, {big['images']:,} files {big['rss_mb']:.0f} MB "
            f"({growth:+.0%}; {big['images'] / big['seconds']:.0f} images/s)"
        )
        folder_s = identity_seconds(folder, work / "digests.json", work)
        archive_s = identity_seconds(args.jpeg_copy, work / "archive-digests.json", work)  # its own data dir's memo
        print(f"cached identity: folder {folder_s:.2f} s, archive {archive_s:.3f} s")
        if args.rerun:
            reruns = cached_reruns(folder, args.jpeg_copy, work, args.rounds)
            medians = {name: statistics.median(values) for name, values in reruns.items()}
            print(
                f"cached re-run: folder {', '.join(f'{s:.1f}' for s in reruns['folder'])} s, archive "
                f"{', '.join(f'{s:.1f}' for s in reruns['archive'])} s; medians {medians['folder']:.1f} / "
                f"{medians['archive']:.1f} s = {medians['folder'] / medians['archive']:.2f}×"
            )
        bounded = growth <= 0.20 and big["rss_mb"] < 1024
        print(
            f"done: ingest {rates['ingest']:.0f} images/s = {ratio:.2f}× one-process decoding; peak RSS "
            f"{small_rss:.0f} → {big['rss_mb']:.0f} MB at 4× the files ({'bounded' if bounded else 'NOT bounded'}); "
            f"cached identity {folder_s:.2f} s vs the archive's {archive_s:.3f} s"
        )
        return 0 if bounded else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
