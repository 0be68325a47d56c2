"""Using the model, measured: batch prediction from image files against scoring the same arrays in
memory, the HTTP service under 8 concurrent clients, and what the prediction log costs both, for the
`classic` and `fast` networks.

    python benchmarks/bench_serving.py --source data/cache/cifar-10-python.tar.gz --requests 500 \
        --out benchmarks/serving.md

The networks have random weights: speed depends on the architecture, not on what it learned. Each is
registered as a real registry version (export + smoke test), as a promotion would.

1. Throughput, images/s, on the first test images of the archive written as PNG files (median of
   `--rounds`, the measurements alternated within each round):
   a. `model.predict` on the uint8 arrays already in memory, through the preset's predictor (what
      evaluation runs; for `fast`, its 6-view TTA): the baseline;
   b. the exported artifact's endpoint on the same arrays in batches of 256;
   c. `predict_files`: the files decoded, scored and written to Parquet (the flow's work);
   d. the whole `predict` flow (Prefect flow + tasks + artifacts) on the folder, with the prediction
      log on (the default), and d′, the same with it off (`log_predictions=False`, `--no-log`);
   e. the decoding floor: the same files only decoded (`convert_image`, 2 threads, no model).
   The flow's overhead is d's time ÷ a's time (target ≤ 1.3). Where decoding a file costs more than
   the network (the small `classic` CNN), d ÷ (a + e) says how the flow compares with doing the two
   unavoidable pieces of work one after the other.
2. The service (`serving/app.py`, a real uvicorn process on loopback): requests/s and p50/p99
   latency of single-image POST /predict requests from 8 concurrent clients, and the error count,
   with each request scored alone (`--max-batch 1`) and with micro-batching (the default), the
   prediction log on (the default).
3. The prediction log's overhead (`cifarflow.monitoring.log`), log on against log off, alternated in
   one run. The service: as in 2 with micro-batching, a fresh process per measurement, on then off in
   odd rounds and off then on in even ones (`--log-rounds`), medians over the rounds; targets: log on
   keeps ≥ 90% of the requests/s and a p99 latency within +10%. After each log-on run the service is
   stopped with SIGTERM (its writer commits what waits) and the log read back (`read_window`): each network's
   measured requests must give one row per answer (200), every id distinct, exactly the
   `prediction_id`s the clients received. The batch flow: 1d against 1d′ (target: log on keeps ≥ 90%
   of the images/s).
4. Runtimes: each preset (classic, quick, fast) as a float32 random-weight version, scored in memory by its
   SavedModel (TensorFlow) and its model.onnx (onnxruntime), batch 1 and 256, alternated; images/s and p50/p99 per
   call. `--runtimes-only` measures just this, on random pixels (a few minutes).
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect and TensorFlow are imported

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from cifarflow.data.archive import local_path, read_archive
from cifarflow.files import file_digest
from cifarflow.layout import DataLayout
from cifarflow.models.presets import PRESETS
from cifarflow.monitoring.log import read_window, window_keys
from cifarflow.registry import store
from cifarflow.registry.build import Canary, make_champion, stage_next_version

# For this process and the services it starts (none of the imports above imports Prefect).
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-serving-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

REPO_ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 8
NORMALIZATION = {
    "unit": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
    "standardize": ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
}


def register(registry: Path, preset_name: str, label_names: list[str], canary: np.ndarray, scratch: Path) -> str:
    """A random-weight network of the preset, registered as the next version (exports + smoke test), in float32 as
    training returns every network (`cifarflow.training.airbench_loop.in_float32`)."""

    from cifarflow.data.transform import Normalization
    from cifarflow.models.presets import get_preset

    preset = get_preset(preset_name)
    mean, std = NORMALIZATION[preset.normalization]
    side = int(canary.shape[1])
    model = preset.build(
        Normalization(preset.normalization, mean, std), num_classes=len(label_names), image_size=side, seed=0
    )
    scratch.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{preset_name}-", dir=scratch)) / "model.keras"
    model.save(path)
    probabilities = preset.predict(preset.load(path), canary)
    record = store.VersionRecord(
        model_id=file_digest(path),
        run_name=f"bench-{preset_name}",
        preset=preset_name,
        accuracy=0.0,
        label_names=tuple(label_names),
        dataset_version="bench",
        test_set_sha256="bench",
        test_images=0,
        decision="benchmark",
    )
    labels = np.zeros(1, np.int64)
    staged = stage_next_version(registry, path, record, {}, labels, labels, Canary(canary, probabilities))
    return make_champion(registry, staged, reason=f"benchmark: {preset_name}").name


def runtime_calls(score, pixels: np.ndarray, calls: int) -> list[float]:
    """Seconds of each of `calls` calls of `score(pixels)`."""
    seconds = []
    for _ in range(calls):
        seconds.append(timed(lambda: score(pixels)))
    return seconds


def runtimes(registry: Path, label_names: list[str], pixels: np.ndarray, scratch: Path, args) -> list[str]:
    """The markdown section "Runtimes": each preset's float32 random-weight version scored in memory by its
    SavedModel (TensorFlow) and by its model.onnx (onnxruntime), batch 1 and 256, the two alternated in each of
    `args.runtime_rounds` rounds; images/s over all calls, p50 and p99 of a call. The rule: onnxruntime serves a
    preset only if it is faster at both batch sizes (the service micro-batches: it sees both)."""
    import onnxruntime

    from cifarflow.registry.saved_model import load_export

    rows, choices = [], {}
    for preset_name in PRESETS:
        version = store.read_version(registry, register(registry, preset_name, label_names, pixels[:64], scratch))
        session = onnxruntime.InferenceSession(str(version.onnx_path), providers=["CPUExecutionProvider"])
        scorers = {
            "SavedModel": load_export(version.export_dir).probabilities,
            "onnxruntime": lambda batch, session=session: session.run(["probabilities"], {"pixels": batch})[0],
        }
        faster = []
        for batch in (1, 256):
            x, calls = pixels[:batch], args.runtime_calls if batch == 1 else max(2, args.runtime_calls // 20)
            times: dict[str, list[float]] = {name: [] for name in scorers}
            for score in scorers.values():
                runtime_calls(score, x, 3)  # warm-up
            for number in range(args.runtime_rounds):
                for name in list(scorers) if number % 2 == 0 else list(scorers)[::-1]:
                    times[name] += runtime_calls(scorers[name], x, calls)
            rate = {name: batch * len(t) / sum(t) for name, t in times.items()}
            faster.append(rate["onnxruntime"] > rate["SavedModel"])
            for name, t in times.items():
                p50, p99 = np.percentile(t, 50) * 1000, np.percentile(t, 99) * 1000
                rows.append(
                    f"| `{preset_name}` | {batch} | {name} | {len(t)} | {rate[name]:,.0f} img/s | {p50:.2f} ms | "
                    f"{p99:.2f} ms | {rate[name] / rate['SavedModel']:.2f} |"
                )
            print(rows[-2], rows[-1], sep="\n", flush=True)
        choices[preset_name] = "onnxruntime" if all(faster) else "SavedModel"
    return [
        "",
        "## Runtimes: the SavedModel (TensorFlow) against model.onnx (onnxruntime)",
        "",
        f"Each preset's random-weight network in float32 at {pixels.shape[1]} px, registered as a real version (so "
        "its model.onnx passed the smoke test), scored in memory in this one process: batch 1 and 256, the two "
        f"runtimes alternated in each of {args.runtime_rounds} rounds; images/s over all calls, p50/p99 of one call.",
        "",
        "| network | batch | runtime | calls | images/s | p50 per call | p99 per call | ÷ SavedModel |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Serves (onnxruntime only where faster at both batch sizes): "
        + ", ".join(f"`{name}` {runtime}" for name, runtime in choices.items())
        + ".",
    ]


def write_pngs(pixels: np.ndarray, folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for number, image in enumerate(pixels):
        path = folder / f"{number:05d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def throughput(preset_name: str, version: str, registry: Path, pixels: np.ndarray, folder: Path, rounds: int) -> dict:
    pixels = pixels[: len(list(folder.glob("*.png")))]
    from cifarflow.inference.batch import BATCH_SIZE, DECODE_THREADS, predict_files
    from cifarflow.inference.predictor import load_predictor
    from cifarflow.intake.images import convert_image
    from cifarflow.models.presets import get_preset
    from flows.predict_flow import predict

    files = sorted(folder.glob("*.png"))
    preset = get_preset(preset_name)
    model = preset.load(store.read_version(registry, version).model_path)
    predictor = load_predictor(version, registry)
    scratch = Path(tempfile.mkdtemp(prefix="bench-predict-"))

    def in_memory_export():
        for start in range(0, len(pixels), BATCH_SIZE):
            predictor.probabilities(pixels[start : start + BATCH_SIZE])

    def decode_only():
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            list(pool.map(convert_image, files, [predictor.image_size] * len(files)))

    steps = {
        "a": lambda: preset.predict(model, pixels),
        "b": in_memory_export,
        "c": lambda: predict_files(files, predictor, scratch / "c.parquet"),
        "d": lambda: predict([str(folder)], registry.parent, version, scratch / "d.parquet"),
        "d′": lambda: predict([str(folder)], registry.parent, version, scratch / "d.parquet", log_predictions=False),
        "e": decode_only,
    }
    steps["a"](), steps["b"](), steps["d"]()  # warm-up: graphs traced, the Prefect server started
    times: dict[str, list[float]] = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            times[key].append(timed(step))
    shutil.rmtree(scratch, ignore_errors=True)
    return {key: statistics.median(values) for key, values in times.items()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_test(url: str, images: list[bytes], requests_per_client: int) -> dict:
    """`CLIENTS` clients, each sending `requests_per_client` single-image requests one after the other;
    the `prediction_id` of every answer (200) is kept in "ids"."""
    import httpx

    latencies: list[float] = []
    ids: list[str] = []
    errors = 0
    lock = threading.Lock()

    def client(number: int) -> None:
        nonlocal errors
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(requests_per_client):
                body = images[(number * requests_per_client + i) % len(images)]
                started = time.perf_counter()
                try:
                    response = http.post("/predict", files={"file": ("image.png", body, "image/png")})
                    ok = response.status_code == 200
                except httpx.HTTPError:  # a dropped connection or a timeout is an error too
                    ok = False
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    errors += not ok
                    if ok:
                        ids.append(response.json().get("prediction_id"))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / wall,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": errors,
        "ids": ids,
    }


def service(
    registry: Path,
    versions: dict[str, str],
    images: list[bytes],
    requests_per_client: int,
    max_batch: int = 256,
    log: bool = True,
) -> dict:
    """A fresh service process on `registry`'s data dir, each network served live in turn and load-tested;
    with `log`, the prediction log starts empty and, once the service has stopped (SIGTERM: its writer
    flushes), each network's measured requests are checked against it ("log" in its result)."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_root = DataLayout(registry.parent).prediction_log
    shutil.rmtree(log_root.parent, ignore_errors=True)
    command = [sys.executable, "serving/app.py", "--data-dir", str(registry.parent), "--port", str(port)]
    command += ["--max-batch", str(max_batch)] + ([] if log else ["--no-log"])
    windows = {}  # preset name: (since, until) of its measured requests
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.5)
        for preset_name, version in versions.items():
            store.move_alias(registry, version, by="hand", reason=f"benchmark: serve {preset_name}")
            while httpx.get(f"{url}/health").json()["model_version"] != version:  # switched live
                time.sleep(0.2)
            load_test(url, images, 3)  # warm-up (logged too: the window below leaves its rows out)
            since = datetime.now(UTC)
            results[preset_name] = load_test(url, images, requests_per_client)
            windows[preset_name] = since, datetime.now(UTC)
    finally:
        process.terminate()
        process.wait(timeout=30)
    if log:
        for preset_name, (since, until) in windows.items():
            window = read_window(log_root, window_keys(log_root, since=since, until=until)[0])
            returned = results[preset_name]["ids"]
            results[preset_name]["log"] = {
                "rows": len(window),
                "distinct": len({row.prediction_id for row in window}),
                "answered": len(returned),
                "all_logged": {row.prediction_id for row in window} == set(returned) and len(window) == len(returned),
                "versions": {row.model_version for row in window} <= {versions[preset_name]},
            }
    return results


def log_check(checks: list[dict]) -> str:
    """The log-on runs' read-back, in words: one line when every round gave the same."""
    texts = [
        f"{c['rows']:,} rows for {c['answered']:,} answers, {c['distinct']:,} distinct ids, "
        f"all returned ids logged: {'yes' if c['all_logged'] else '**no**'}"
        + ("" if c["versions"] else ", **rows of another model version**")
        for c in checks
    ]
    if len(set(texts)) == 1:
        return f"{texts[0]} (each of {len(texts)} rounds)" if len(texts) > 1 else texts[0]
    return "; ".join(f"round {n}: {text}" for n, text in enumerate(texts, 1))


def log_overhead(versions: dict[str, str], logged: dict[bool, list[dict]], flow_rates: dict, args) -> list[str]:
    """The markdown section "Prediction log overhead": the service's and the batch flow's tables."""
    lines = [
        "",
        "## Prediction log overhead",
        "",
        f"The service as above (micro-batched), the prediction log on against off (`--no-log`): a fresh process "
        f"for each of {args.log_rounds} rounds × on and off, alternated; {CLIENTS} clients × {args.requests} "
        "requests per network; median of the rounds. After each log-on run the service was stopped (SIGTERM) and "
        "its log read back (`read_window`) over the measured requests.",
        "",
        "| network | requests | requests/s, log on | log off | on ÷ off (target ≥ 0.90) | p50, log on | log off | "
        "p99, log on | log off | p99 on ÷ off (target ≤ 1.10) | errors (on / off) | the log after each log-on run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def median(results: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in results)

    for preset_name in versions:
        on = [result[preset_name] for result in logged[True]]
        off = [result[preset_name] for result in logged[False]]
        lines.append(
            f"| `{preset_name}` | {on[0]['requests']:,} | {median(on, 'rps'):,.1f} | {median(off, 'rps'):,.1f} | "
            f"**{median(on, 'rps') / median(off, 'rps'):.2f}** | {median(on, 'p50_ms'):.1f} ms | "
            f"{median(off, 'p50_ms'):.1f} ms | {median(on, 'p99_ms'):.1f} ms | {median(off, 'p99_ms'):.1f} ms | "
            f"**{median(on, 'p99_ms') / median(off, 'p99_ms'):.2f}** | {sum(r['errors'] for r in on)} / "
            f"{sum(r['errors'] for r in off)} | {log_check([r['log'] for r in on])} |"
        )
    lines += [
        "",
        f"The whole `predict` flow (1d) with the log on against off (`--no-log`), alternated within each of "
        f"{args.rounds} rounds, median:",
        "",
        "| network | images/s, log on | log off | on ÷ off (target ≥ 0.90) |",
        "|---|---:|---:|---:|",
    ]
    for preset_name, (on, off) in flow_rates.items():
        lines.append(f"| `{preset_name}` | {on:,.0f} img/s | {off:,.0f} img/s | **{on / off:.2f}** |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="data/cache/cifar-10-python.tar.gz", help="a CIFAR-10 archive")
    parser.add_argument("--images", type=int, default=10000, help="test images written as PNG files (seed)")
    parser.add_argument("--fast-images", type=int, default=2000, help="of those, how many `fast` scores (it is slow)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50, help="requests per client (8 clients; 500: 4,000 in all)")
    parser.add_argument("--log-rounds", type=int, default=3, help="service runs with the log on, and as many off")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    parser.add_argument("--runtime-rounds", type=int, default=6, help="SavedModel/onnxruntime alternations")
    parser.add_argument("--runtime-calls", type=int, default=100, help="batch-1 calls per round (batch 256: ÷ 20)")
    parser.add_argument("--runtimes-only", action="store_true", help="only the runtime section, on random pixels")
    args = parser.parse_args()
    if args.runtimes_only:
        work = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
        pixels = np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
        text = "\n".join(runtimes(work / "data" / "registry", [f"class {n}" for n in range(10)], pixels, work, args))
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        shutil.rmtree(work, ignore_errors=True)
        return

    splits, label_names = read_archive(local_path(args.source))
    pixels = np.ascontiguousarray(splits["test"].images[: args.images])
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    registry = work / "data" / "registry"
    folder = work / "images"
    write_pngs(pixels, folder)
    folders = {"classic": folder, "fast": work / "images-fast"}
    folders["fast"].mkdir()
    for path in sorted(folder.glob("*.png"))[: args.fast_images]:
        os.link(path, folders["fast"] / path.name)
    names = ("classic", "fast")
    versions = {name: register(registry, name, label_names, pixels[:200], work / "models") for name in names}

    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {platform.machine()}, {os.cpu_count()} cores "
        f"(`python benchmarks/bench_serving.py --images {args.images} --fast-images {args.fast_images} "
        f"--rounds {args.rounds} --requests {args.requests} --log-rounds {args.log_rounds}`): "
        "CIFAR-10 test images as 32×32 PNG files "
        f"({len(pixels):,} for `classic`, {min(args.fast_images, len(pixels)):,} for `fast`); random-weight networks "
        "registered as real versions. Median of the rounds.",
        "",
        "| network | a: `model.predict`, arrays in memory | b: exported endpoint, in memory | c: files → Parquet "
        "(`predict_files`) | d: the `predict` flow | e: only decoding the files | d ÷ a (target ≤ 1.3) | d ÷ (a + e) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    flow_rates = {}  # preset name: the flow's images/s with the log on (d) and off (d′)
    for preset_name, version in versions.items():
        store.move_alias(registry, version, by="hand", reason=f"benchmark: {preset_name}")
        t = throughput(preset_name, version, registry, pixels, folders[preset_name], args.rounds)
        count = len(list(folders[preset_name].glob("*.png")))
        rate = {key: count / seconds for key, seconds in t.items()}
        flow_rates[preset_name] = rate["d"], rate["d′"]
        lines.append(
            f"| `{preset_name}` | {rate['a']:,.0f} img/s | {rate['b']:,.0f} img/s | {rate['c']:,.0f} img/s | "
            f"{rate['d']:,.0f} img/s | {rate['e']:,.0f} img/s | **{t['d'] / t['a']:.2f}** | "
            f"{t['d'] / (t['a'] + t['e']):.2f} |"
        )
        print(lines[-1], flush=True)
    encoded = [(folder / f"{n:05d}.png").read_bytes() for n in range(min(200, len(pixels)))]
    alone = service(registry, versions, encoded, args.requests, max_batch=1)
    batched = service(registry, versions, encoded, args.requests)
    logged: dict[bool, list[dict]] = {True: [], False: []}  # log on / off: one result per round
    for number in range(args.log_rounds):
        for log in (True, False) if number % 2 == 0 else (False, True):
            logged[log].append(service(registry, versions, encoded, args.requests, log=log))
            print(f"service, log {'on' if log else 'off'}, round {number + 1}: done", flush=True)
    lines += [
        "",
        f"The service on loopback, {CLIENTS} concurrent clients, one image per request, the prediction log on "
        "(the default); each request scored alone (`--max-batch 1`) against the default micro-batching "
        "(concurrent requests in one model call):",
        "",
        "| network | scoring | requests | requests/s | p50 latency | p99 latency | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for preset_name in versions:
        for how, r in (("each request alone", alone[preset_name]), ("micro-batched (default)", batched[preset_name])):
            lines.append(
                f"| `{preset_name}` | {how} | {r['requests']} | {r['rps']:,.1f} | {r['p50_ms']:.1f} ms | "
                f"{r['p99_ms']:.1f} ms | {r['errors']} |"
            )
    lines += log_overhead(versions, logged, flow_rates, args)
    lines += runtimes(registry, label_names, pixels[:256], work / "models", args)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
