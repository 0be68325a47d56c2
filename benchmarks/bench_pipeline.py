"""Pipeline speed and memory, measured in one run on one machine; writes a Markdown table.

    python benchmarks/bench_pipeline.py --source data/cache/cifar-10-python.tar.gz --out benchmarks/results.md

Each measurement runs in a fresh subprocess so its peak RSS is its own:
- ingest (archive → verified Parquet shards + manifest) and preprocess (shards → features);
- loading the training features into memory (float32 and uint8);
- the whole flow, cold (seed model, 15 epochs) unless --skip-cold, then re-run with nothing
  changed (every task Cached), as a user runs it: `python flows/cifar_flow.py ...`;
- Prefect's per-task overhead: a flow of N no-op tasks against the same temporary server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = os.environ | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
step, args = sys.argv[1], json.loads(sys.argv[2])
started = time.perf_counter()
if step == "ingest":
    from cifarflow.data.ingest import ingest_archive
    from cifarflow.layout import DataLayout
    ingest_archive(args["source"], DataLayout(Path(args["data"])), log=lambda *_: None)
elif step == "preprocess":
    from cifarflow.data.transform import build_features
    build_features(Path(args["data"]) / "parquet" / "manifest.json", Path(args["data"]) / "features" / "bench",
                   "unit", log=lambda *_: None)
elif step == "load":
    import numpy as np
    from cifarflow.data.transform import load_split
    x = np.asarray(load_split(Path(args["data"]) / "features" / "bench", "train", args["kind"])).copy()
elif step == "prefect_overhead":
    from prefect import flow, task
    @task
    def noop(i):
        return i
    @flow
    def many(n):
        return [noop(i) for i in range(n)]
    many(1)  # warm-up: server start and flow registration are not per-task costs
    t0 = time.perf_counter()
    many(args["n"])
    per_task = (time.perf_counter() - t0) / args["n"]
    print("PER_TASK", per_task)
seconds = time.perf_counter() - started
peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT", json.dumps({{"seconds": seconds, "peak_rss_mb": peak_rss_mb}}))
"""


def child(step: str, **args) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(repo=str(REPO)), step, json.dumps(args)],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    ).stdout
    result = json.loads(out.split("RESULT ", 1)[1])
    if "PER_TASK" in out:
        result["per_task"] = float(out.split("PER_TASK ", 1)[1].split()[0])
    return result


def flow_run(source: str, data_dir: Path, extra: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "MAXRSS %M",
            sys.executable,
            str(REPO / "flows" / "cifar_flow.py"),
            "--source",
            source,
            "--data-dir",
            str(data_dir),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=ENV | {"PREFECT_LOGGING_LEVEL": "INFO"},
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    output = done.stdout + done.stderr
    return {
        "seconds": seconds,
        "peak_rss_mb": int(output.rsplit("MAXRSS ", 1)[1].split()[0]) / 1024,
        "cached_tasks": output.count("Finished in state Cached"),
        "output": output,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="the CIFAR-10 python archive (path or URL)")
    parser.add_argument("--data-dir", default=None, help="data dir for the flow runs (default: a temp dir)")
    parser.add_argument("--skip-cold", action="store_true", help="reuse an existing run in --data-dir")
    parser.add_argument("--tasks", type=int, default=50, help="no-op tasks for the Prefect overhead measurement")
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        data = Path(scratch) / "data"
        ingest = child("ingest", source=args.source, data=str(data))
        rows.append(("ingest: archive → 6 Parquet shards + manifest (60,000 images)", ingest))
        shards_mb = sum(p.stat().st_size for p in (data / "parquet").rglob("*.parquet")) / 2**20
        pre = child("preprocess", data=str(data))
        rows.append(("preprocess: shards → normalized float32 + one-hot .npy", pre))
        rows.append(("load training features into memory (float32, 614 MB)", child("load", data=str(data), kind="x")))
        rows.append(("load training pixels into memory (uint8, 154 MB)", child("load", data=str(data), kind="pixels")))
        overhead = child("prefect_overhead", n=args.tasks)

        flow_dir = Path(args.data_dir) if args.data_dir else Path(scratch) / "flow-data"
        if not args.skip_cold:
            cold = flow_run(args.source, flow_dir, [])
            rows.append(("whole flow, cold (seed model, 15 epochs)", cold))
        cached = flow_run(args.source, flow_dir, [])
        rows.append((f"whole flow, re-run with nothing changed ({cached['cached_tasks']} tasks Cached)", cached))

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()} (`python benchmarks/bench_pipeline.py`).",
        "",
        "| step | wall time | peak RSS |",
        "|---|---:|---:|",
        *[f"| {name} | {r['seconds']:.1f} s | {r['peak_rss_mb']:.0f} MB |" for name, r in rows],
        f"| Prefect overhead per task run ({args.tasks} no-op tasks, temporary local server) | "
        f"{overhead['per_task'] * 1000:.0f} ms | — |",
        "",
        f"Parquet shards on disk: {shards_mb:.0f} MB (zstd).",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
