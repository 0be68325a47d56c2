"""Pipeline speed, memory and disk, measured in one run on one machine; writes a Markdown table.

    python benchmarks/bench_pipeline.py --source data/cache/cifar-10-python.tar.gz --data-dir /tmp/bench-data

Every measurement runs in a fresh subprocess (so its peak RSS is its own) with a fresh PREFECT_HOME
and no PREFECT_API_URL, i.e. on Prefect's temporary local server, as a user's first run is:
- ingest (archive → verified Parquet shards + manifest) and preprocess (shards → uint8 pixels,
  labels and one-hot .npy + the fitted normalization in meta.json);
- loading the training pixels into memory (uint8);
- the whole flow, cold (classic model, 15 epochs) unless --skip-cold (then --data-dir must hold a
  finished run of the same command);
- the re-run with nothing changed (every task Cached), as a user runs it
  (`python flows/cifar_flow.py --source ... --data-dir ...`), against its *floor*: the same venv
  running a flow of one cached task (`cache_policy=INPUTS`, persisted result, run once beforehand).
  The two alternate, a b a b ..., for --rounds rounds after one unmeasured warm-up of each; the
  table gives each one's median and their ratio (target ≤ 1.15). --rerun-only measures only this;
- the sizes on disk of the features, the Parquet shards and the whole data dir;
- hash throughput (sha256, blake2b, blake3 if installed) over the files the re-run verifies
  (`benchmarks/bench_hashing.py`);
- Prefect's per-task overhead: a flow of N no-op tasks against the same temporary server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_hashing  # beside this file: a script's own folder is the first entry of its sys.path

REPO = Path(__file__).resolve().parents[1]
BASE_ENV = {k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL", "PREFECT_HOME"}} | {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PREFECT_LOGGING_LEVEL": "INFO",
}
TARGET_RATIO = 1.15

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
step, args = sys.argv[1], json.loads(sys.argv[2])
started = time.perf_counter()
if step == "ingest":
    from cifarflow.config import PipelineConfig
    from cifarflow.data.ingest import ingest_source
    ingest_source(PipelineConfig(source=args["source"], data_dir=Path(args["data"])), log=lambda *_: None)
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
print("RESULT", json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb}))
"""

# The floor for a cached re-run: one cached task in a flow, same venv, same temporary server.
FLOOR = r"""
import sys
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import INPUTS


@task(cache_policy=INPUTS, persist_result=True, result_storage=Path(sys.argv[1]))
def one(x: int) -> int:
    return x


@flow(name="cached-floor")
def floor() -> None:
    print("FLOOR_STATE", one(1, return_state=True).name)


if __name__ == "__main__":
    floor()
"""


def fresh_env(scratch: Path) -> dict[str, str]:
    """The benchmark environment with a PREFECT_HOME of its own (one per process)."""
    return BASE_ENV | {"PREFECT_HOME": tempfile.mkdtemp(prefix="prefect-home-", dir=scratch)}


def child(scratch: Path, step: str, **args) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, step, json.dumps(args)],
        capture_output=True,
        text=True,
        env=fresh_env(scratch),
        cwd=REPO,
        check=True,
    ).stdout
    result = json.loads(out.split("RESULT ", 1)[1])
    if "PER_TASK" in out:
        result["per_task"] = float(out.split("PER_TASK ", 1)[1].split()[0])
    return result


def timed(scratch: Path, argv: list[str]) -> dict:
    """Run `python argv...` as a fresh process; wall seconds from start to exit, peak RSS, output."""
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "MAXRSS %M", sys.executable, *argv],
        capture_output=True,
        text=True,
        env=fresh_env(scratch),
        cwd=REPO,
    )
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{output[-3000:]}")
    return {
        "seconds": seconds,
        "peak_rss_mb": int(output.rsplit("MAXRSS ", 1)[1].split()[0]) / 1024,
        "cached_tasks": output.count("Finished in state Cached"),
        "tasks": len(re.findall(r"Task run '[^']*' - Finished in state", output)),
        "output": output,
    }


def flow_run(scratch: Path, source: str, data_dir: Path) -> dict:
    return timed(scratch, [str(REPO / "flows" / "cifar_flow.py"), "--source", source, "--data-dir", str(data_dir)])


def floor_run(scratch: Path, script: Path, storage: Path) -> dict:
    result = timed(scratch, [str(script), str(storage)])
    result["state"] = result["output"].split("FLOOR_STATE ", 1)[1].split()[0]
    return result


def tree_bytes(root: Path) -> int:
    """Bytes of every regular file under root (symlinks not followed)."""
    total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                total += os.lstat(path).st_size
    return total


def current_features_dir(data_dir: Path) -> Path | None:
    """D/features/<key> for the key the last preprocess recorded (else the only one there)."""
    state = data_dir / ".stage-state" / "preprocess.json"
    if state.is_file():
        key = json.loads(state.read_text()).get("key")
        if key and (data_dir / "features" / key).is_dir():
            return data_dir / "features" / key
    dirs = sorted(p for p in (data_dir / "features").glob("*") if p.is_dir())
    return dirs[0] if len(dirs) == 1 else None


def rerun_rounds(scratch: Path, source: str, flow_dir: Path, n: int) -> list[tuple[dict, dict]]:
    """The cached re-run (a) and its floor (b), alternated n times after one unmeasured warm-up of each
    (the floor's first run computes and persists its result; the flow's warms the page cache and .pyc files)."""
    floor_script = scratch / "cached_floor.py"
    floor_script.write_text(FLOOR)
    floor_storage = scratch / "floor-results"
    first_floor = floor_run(scratch, floor_script, floor_storage)
    warm_flow = flow_run(scratch, source, flow_dir)
    print(f"warm-up: flow {warm_flow['seconds']:.2f} s, floor {first_floor['seconds']:.2f} s", file=sys.stderr)
    rounds = []
    for i in range(n):
        a = flow_run(scratch, source, flow_dir)
        b = floor_run(scratch, floor_script, floor_storage)
        rounds.append((a, b))
        print(
            f"round {i + 1}: a (cached flow) {a['seconds']:.2f} s, {a['cached_tasks']}/{a['tasks']} Cached, "
            f"{a['peak_rss_mb']:.0f} MB | b (floor) {b['seconds']:.2f} s, {b['state']}, {b['peak_rss_mb']:.0f} MB",
            file=sys.stderr,
        )
    return rounds


def rerun_table(rounds: list[tuple[dict, dict]]) -> str:
    """The ratio of the medians (target ≤ TARGET_RATIO) and every round, in Markdown."""
    ratio = statistics.median(a["seconds"] for a, _ in rounds) / statistics.median(b["seconds"] for _, b in rounds)
    partly = [i + 1 for i, (a, b) in enumerate(rounds) if a["cached_tasks"] != a["tasks"] or b["state"] != "Cached"]
    lines = [
        f"Cached re-run ÷ floor (target ≤ {TARGET_RATIO}): **{ratio:.2f}** "
        f"({'met' if ratio <= TARGET_RATIO else 'not met'}).",
        "Cached re-run (a) and floor (b), alternated, wall seconds from process start to exit:",
        "",
        "| round | a: cached flow | b: floor | a ÷ b |",
        "|---:|---:|---:|---:|",
        *[
            f"| {i + 1} | {a['seconds']:.2f} s ({a['cached_tasks']}/{a['tasks']} Cached) | {b['seconds']:.2f} s "
            f"({b['state']}) | {a['seconds'] / b['seconds']:.2f} |"
            for i, (a, b) in enumerate(rounds)
        ],
    ]
    if partly:
        lines += ["", f"**Rounds {partly} were not fully Cached: their times are not re-run times.**"]
    return "\n".join(lines)


def step_rows(scratch: Path, source: str, data: Path) -> list[tuple[str, dict]]:
    """Ingest, preprocess and loading the training pixels, each in a fresh process."""
    print("ingest, preprocess, load, Prefect overhead ...", file=sys.stderr)
    return [
        (
            "ingest: archive → Parquet shards + manifest (60,000 images)",
            child(scratch, "ingest", source=source, data=str(data)),
        ),
        (
            "preprocess: shards → uint8 pixels, labels, one-hot .npy + fitted normalization",
            child(scratch, "preprocess", data=str(data)),
        ),
        ("load training pixels into memory (uint8, 154 MB)", child(scratch, "load", data=str(data), kind="pixels")),
    ]


def disk_table(flow_dir: Path) -> str:
    """The sizes of the features, the Parquet shards and the whole data dir, in Markdown."""
    features_dir = current_features_dir(flow_dir)
    features_bytes = tree_bytes(features_dir) if features_dir else None
    shards_bytes = sum(p.stat().st_size for p in (flow_dir / "parquet").rglob("*.parquet"))
    lines = [
        "| on disk | bytes |",
        "|---|---:|",
        f"| features (`{features_dir.relative_to(flow_dir) if features_dir else 'features/?'}`, all files) | "
        f"{mb(features_bytes) if features_bytes is not None else 'n/a'} |",
        f"| Parquet shards (`parquet/**/*.parquet`, zstd) | {mb(shards_bytes)} |",
        f"| whole data dir (`{flow_dir}`) | {mb(tree_bytes(flow_dir))} |",
    ]
    return "\n".join(lines)


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="the CIFAR-10 python archive (path or URL)")
    parser.add_argument("--data-dir", default=None, help="data dir for the flow runs (default: a temp dir)")
    parser.add_argument(
        "--skip-cold", action="store_true", help="reuse a finished run of the same command in --data-dir"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of cached re-run vs floor")
    parser.add_argument("--tasks", type=int, default=50, help="no-op tasks for the Prefect overhead measurement")
    parser.add_argument("--rerun-only", action="store_true", help="only the cached re-run against its floor")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results.md"), help="write the Markdown here")
    args = parser.parse_args()
    if (args.skip_cold or args.rerun_only) and not args.data_dir:
        parser.error("--skip-cold and --rerun-only need --data-dir holding a finished run")

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        scratch = Path(tmp)
        data = scratch / "data"
        if args.rerun_only:
            rounds = rerun_rounds(scratch, args.source, Path(args.data_dir), args.rounds)
            print(rerun_table(rounds))
            return
        rows += step_rows(scratch, args.source, data)
        overhead = child(scratch, "prefect_overhead", n=args.tasks)

        flow_dir = Path(args.data_dir) if args.data_dir else scratch / "flow-data"
        if not args.skip_cold:
            print("whole flow, cold ...", file=sys.stderr)
            rows.append(("whole flow, cold (classic model, 15 epochs)", flow_run(scratch, args.source, flow_dir)))

        rounds = rerun_rounds(scratch, args.source, flow_dir, args.rounds)

    a_med = statistics.median(a["seconds"] for a, _ in rounds)
    b_med = statistics.median(b["seconds"] for _, b in rounds)
    rows.append(
        (
            f"whole flow, re-run with nothing changed (median of {args.rounds}, every task Cached)",
            {"seconds": a_med, "peak_rss_mb": statistics.median(a["peak_rss_mb"] for a, _ in rounds)},
        )
    )
    rows.append(
        (
            f"floor: flow of one cached task, same venv and server (median of {args.rounds})",
            {"seconds": b_med, "peak_rss_mb": statistics.median(b["peak_rss_mb"] for _, b in rounds)},
        )
    )

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()} (`python benchmarks/bench_pipeline.py`). Each row is a fresh "
        "process with its own PREFECT_HOME on Prefect's temporary local server.",
        "",
        "| step | wall time | peak RSS |",
        "|---|---:|---:|",
        *[f"| {name} | {r['seconds']:.2f} s | {r['peak_rss_mb']:.0f} MB |" for name, r in rows],
        f"| Prefect overhead per task run ({args.tasks} no-op tasks, temporary local server) | "
        f"{overhead['per_task'] * 1000:.0f} ms | — |",
        "",
        rerun_table(rounds),
        "",
        disk_table(flow_dir),
        "",
        bench_hashing.run(flow_dir, args.source)[2],
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
