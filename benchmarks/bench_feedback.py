"""Learning from use, measured: do the images the review queue puts first teach the model more than
images chosen at random, and are they the ones the model gets wrong?

    python benchmarks/bench_feedback.py --data-dir data --queue-model champion --out benchmarks/feedback.md
    python benchmarks/bench_feedback.py --data-dir data --retrain-only            # part 1 only
    python benchmarks/bench_feedback.py --data-dir data --queue-model champion --queue-only
    python benchmarks/bench_feedback.py --data-dir data --train 3000 --traffic 1000 --label 200 \
        --seeds 2 --champion-epochs 1 --epochs 1 --retrain-only                    # a smoke test

Needs a data dir whose training and test sets were ingested (`make run`, or the ingest stage); part 2
also needs a model (`--queue-model`: `champion`, a version, a data dir whose champion to use, or
anything the service's `--model` accepts).

1. Retrain ("does least-confident first pay?"). The ingested training set is split by a fixed seeded
   permutation into `--train` (40,000) images a `classic` champion is trained on by the train stage's own
   code (`cifarflow.training.run.train_model`, the preset's recipe and epochs), and `--traffic` (10,000)
   images it then scores, as if served. Of the traffic, `--label` (1,000) get their true labels (the
   reviewers' corrections), chosen in one of these orders:
     least-confident  the queue's order (`least_confident_first` below, the SQL queue's order in numpy, `--measure`,
                      by default the queue's own): the same images for every seed;
     random           a fresh uniform draw per seed;
     none             no new labels: the same retraining on the champion's images alone, so the gain
                      the labels bring shows apart from the gain of training longer.
   For each order and each of `--seeds` (3) seeds, training warm-starts from the champion's weights
   (`callbacks.WarmStart`, as `--warm-start champion` does) and runs `--epochs` (3) epochs on the
   champion's images plus the labeled ones; the model is evaluated on the 10,000 test images. Reported:
   the champion's test accuracy, and per order the gain in test accuracy over it, mean ± sd (n − 1) over
   the seeds. Verdict: least-confident stays the queue's default order only if its mean gain is at least
   random's.
2. Queue ("are the least confident the wrong ones?"). The model serves the test images through the real
   service (`serving/app.py` on 127.0.0.1, PNGs posted to /predict/batch, 64 per request) on a scratch
   data dir (links to the data dir's `parquet/` and to the model's registry, its own empty monitoring
   folder, removed afterwards: no benchmark traffic is left in anyone's prediction log). The
   probabilities are read back from the scratch prediction log (`read_window`) and joined with the true
   labels by prediction id. Per uncertainty measure: the error rate among the `--queue-n` (500) least
   confident, against that of `--queue-n` logged images drawn at random (`--random-draws` draws: mean
   and sd). Target: the least-confident error rate at least twice the random one. The service's own
   `GET /review/queue?n=…` is compared with `least_confident_first(…, DEFAULT_MEASURE)` on the logged
   probabilities.

The last line is `done: …`, or `error: …` saying what went wrong (exit 1; 2 for unusable options).
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect and TensorFlow are imported

import argparse
import contextlib
import io
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cifarflow.cli import ArgumentParser, comma_list, done, run_cli
from cifarflow.data.shards import read_split
from cifarflow.data.transform import Normalization, fit_normalization, one_hot
from cifarflow.errors import PipelineInputError
from cifarflow.feedback.queue import DEFAULT_MEASURE, MEASURES, uncertainty
from cifarflow.files import read_json, write_json
from cifarflow.inference.predictor import ModelNotFound, locate
from cifarflow.layout import DataLayout
from cifarflow.models.presets import PRESETS, get_preset
from cifarflow.registry import store

REPO_ROOT = Path(__file__).resolve().parents[1]
SPLIT_SEED = 20261201  # the champion / traffic split of the training set
CHAMPION_SEED = 0
ORDERS = ("least-confident", "random", "none")
RANDOM_DRAW_SEED = 7_261_201  # random labels: one draw per retraining seed (np.random.default_rng([this, seed]))
QUEUE_DRAW_SEED = 1_130  # part 2's random baselines
POST_BATCH = 64  # images per /predict/batch request (the service's most)
REVIEW_QUEUE_MAX = 500  # the most one /review/queue answer lists
FLUSH_WAIT_S = 3.0  # past the prediction log's one-second flush, so every row is on disk


@dataclass(frozen=True)
class Data:
    """The ingested images (N, 32, 32, 3) uint8 and labels (N,) of both splits."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    label_names: list[str]


def least_confident_first(probabilities: np.ndarray, measure: str = DEFAULT_MEASURE) -> np.ndarray:
    """(N,) row indices, least confident first, ties in log order: the queue's SQL order, in numpy."""
    return np.argsort(-uncertainty(probabilities, measure), kind="stable")


def load_data(data_dir: Path, need_train: bool) -> Data:
    manifest = DataLayout(data_dir).shard_manifest
    label_names = read_json(manifest)["label_names"]
    test_images, test_labels = read_split(manifest, "test")
    if need_train:
        train_images, train_labels = read_split(manifest, "train")
    else:
        train_images, train_labels = np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.uint8)
    return Data(train_images, train_labels, test_images, test_labels, label_names)


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (n − 1; 0 for a single value)."""
    array = np.asarray(values, np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1 else 0.0)


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def code_version() -> str:
    found = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    return found.stdout.strip() or "unknown"


def machine() -> str:
    load = os.getloadavg()[0]
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1-min load {load:.1f} at the end"


# --- part 1: retrain ------------------------------------------------------------------------------------


def split_train(count: int, train: int, traffic: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (champion's, traffic's) indices into the training set, by a fixed seeded permutation."""
    if train + traffic > count:
        raise ValueError(f"--train {train} + --traffic {traffic} is more than the {count} training images")
    order = np.random.default_rng(SPLIT_SEED).permutation(count)
    return np.sort(order[:train]), np.sort(order[train : train + traffic])


def write_features(directory: Path, data: Data, train_at: np.ndarray, normalization: Normalization) -> Path:
    """A features directory as the preprocess stage writes it (the arrays the trainers read and meta.json):
    the training images `train_at`, and the whole test split (the trainer's validation curve)."""
    directory.mkdir(parents=True)
    splits = {"train": (data.train_images[train_at], data.train_labels[train_at])}
    splits["test"] = (data.test_images, data.test_labels)
    for split, (pixels, labels) in splits.items():
        np.save(directory / f"pixels_{split}.npy", pixels)
        np.save(directory / f"labels_{split}.npy", labels)
        np.save(directory / f"onehot_{split}.npy", one_hot(labels, len(data.label_names)))
    meta = {
        "features_sha256": f"bench-feedback-{len(train_at)}",
        "label_names": data.label_names,
        "normalization": normalization.to_json(),
        "image_size": int(data.test_images.shape[1]),
        "dataset": {},
        "files": {},
    }
    write_json(directory / "meta.json", meta)
    return directory


def train_run(settings, features: Path, model_dir: Path, what: str):
    """`train_model` (the train stage's code), one line per epoch; returns its TrainResult."""
    from cifarflow.training.run import train_model

    def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in {"epoch", "seconds"})
        print(f"  {what}: epoch {epoch}/{total}: {shown} ({metrics['seconds']:.1f} s)", flush=True)

    return train_model(settings, features, model_dir, on_epoch=on_epoch, verbose=0)


def probabilities_of(preset_name: str, model_path: Path, pixels: np.ndarray) -> np.ndarray:
    """(N, classes) probabilities by the preset's own predictor (what evaluation runs)."""
    preset = get_preset(preset_name)
    return preset.predict(preset.load(model_path), pixels)


def choose(order: str, probabilities: np.ndarray, count: int, seed: int, measure: str) -> np.ndarray:
    """Positions (into the traffic) of the `count` images labeled under `order` for retraining seed `seed`."""
    if order == "least-confident":
        return least_confident_first(probabilities, measure)[:count]
    if order == "random":
        return np.random.default_rng([RANDOM_DRAW_SEED, seed]).choice(len(probabilities), count, replace=False)
    return np.zeros(0, np.int64)


def test_accuracy(preset_name: str, model_path: Path, data: Data) -> float:
    return float((probabilities_of(preset_name, model_path, data.test_images).argmax(1) == data.test_labels).mean())


def retrain(settings, data: Data, train_at: np.ndarray, normalization: Normalization, work: Path, what: str) -> float:
    """Test accuracy after training with `settings` (a warm start) on the training images `train_at`."""
    features = write_features(work / "features", data, train_at, normalization)
    result = train_run(settings, features, work / "model", what)
    if not (result.warm_start or {}).get("applied"):
        raise RuntimeError(f"{what}: the warm start was not applied: {result.warm_start}")
    accuracy = test_accuracy(settings.model, result.model_path, data)
    shutil.rmtree(work, ignore_errors=True)  # 100+ MB of arrays per run
    return accuracy


def retrain_part(args: argparse.Namespace, data: Data, work: Path) -> dict:
    from cifarflow.training.run import TrainSettings

    started = time.perf_counter()
    preset = get_preset(args.model)
    champion_at, traffic_at = split_train(len(data.train_labels), args.train, args.traffic)
    normalization = fit_normalization(data.train_images[champion_at], preset.normalization)
    champion_settings = TrainSettings(
        preset.name, args.champion_epochs or preset.epochs, preset.batch_size, preset.learning_rate, CHAMPION_SEED
    )
    print(
        f"champion: {preset.name} on {len(champion_at):,} images, {plural(champion_settings.epochs, 'epoch')}",
        flush=True,
    )
    features = write_features(work / "features-champion", data, champion_at, normalization)
    champion = train_run(champion_settings, features, work / "champion", "champion")
    champion_seconds = time.perf_counter() - started
    champion_accuracy = test_accuracy(preset.name, champion.model_path, data)
    traffic = probabilities_of(preset.name, champion.model_path, data.train_images[traffic_at])
    traffic_wrong = traffic.argmax(1) != data.train_labels[traffic_at]
    print(f"champion: test accuracy {champion_accuracy:.4f}; traffic error rate {traffic_wrong.mean():.4f}", flush=True)

    runs = []
    for order in args.orders:
        for seed in range(1, args.seeds + 1):
            chosen, what = choose(order, traffic, args.label, seed, args.measure), f"{order}, seed {seed}"
            settings = replace(
                champion_settings, epochs=args.epochs, seed=seed, warm_start_from=str(champion.model_path)
            )
            run_started = time.perf_counter()
            train_at = np.concatenate([champion_at, traffic_at[chosen]])
            accuracy = retrain(settings, data, train_at, normalization, work / f"{order}-{seed}", what)
            runs.append(
                {
                    "order": order,
                    "seed": seed,
                    "labeled": len(chosen),
                    "champion_error_on_labeled": float(traffic_wrong[chosen].mean()) if len(chosen) else None,
                    "test_accuracy": accuracy,
                    "gain": accuracy - champion_accuracy,
                    "seconds": time.perf_counter() - run_started,
                }
            )
            print(f"{what}: test accuracy {accuracy:.4f} (gain {accuracy - champion_accuracy:+.4f})", flush=True)
    return {
        "preset": preset.name,
        "measure": args.measure,
        "train": len(champion_at),
        "traffic": len(traffic_at),
        "label": args.label,
        "champion_epochs": champion_settings.epochs,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "champion_accuracy": champion_accuracy,
        "champion_seconds": champion_seconds,
        "traffic_error_rate": float(traffic_wrong.mean()),
        "runs": runs,
        "seconds": time.perf_counter() - started,
    }


def retrain_summary(result: dict) -> dict[str, dict]:
    """Per order: test accuracy and gain, mean and sd over the seeds, and the gains per seed."""
    summary = {}
    for order in dict.fromkeys(run["order"] for run in result["runs"]):
        runs = [run for run in result["runs"] if run["order"] == order]
        errors = [run["champion_error_on_labeled"] for run in runs if run["champion_error_on_labeled"] is not None]
        summary[order] = {
            "accuracy": mean_sd([run["test_accuracy"] for run in runs]),
            "gain": mean_sd([run["gain"] for run in runs]),
            "gains": [run["gain"] for run in runs],
            "labeled": runs[0]["labeled"],
            "error_on_labeled": float(np.mean(errors)) if errors else None,
            "seconds": float(np.mean([run["seconds"] for run in runs])),
        }
    return summary


def retrain_verdict(summary: dict[str, dict]) -> str:
    if "least-confident" not in summary or "random" not in summary:
        return "no verdict: least-confident and random were not both run (`--orders`)"
    ours, theirs = summary["least-confident"]["gain"][0], summary["random"]["gain"][0]
    if ours >= theirs:
        return (
            f"least-confident first pays: mean gain {ours:+.4f} ≥ random's {theirs:+.4f}; "
            "it stays the queue's default order"
        )
    return (
        f"least-confident first does NOT pay: mean gain {ours:+.4f} < random's {theirs:+.4f}; "
        "the queue's default order should not be least-confident first"
    )


def retrain_markdown(result: dict) -> str:
    summary = retrain_summary(result)
    descriptions = {
        "least-confident": f"least-confident first (`{result['measure']}`)",
        "random": "at random (a new draw per seed)",
        "none": "none (retrained on the champion's images only)",
    }
    champion_epochs, epochs = plural(result["champion_epochs"], "epoch"), plural(result["epochs"], "epoch")
    seeds = plural(result["seeds"], "time")
    lines = [
        "## 1. Retraining on reviewed traffic",
        "",
        f"A `{result['preset']}` champion trained on {result['train']:,} training images ({champion_epochs}, seed "
        f"{CHAMPION_SEED}, {result['champion_seconds']:.0f} s): test accuracy **{result['champion_accuracy']:.4f}**. "
        f"It scored the other {result['traffic']:,} (its error rate there: {result['traffic_error_rate']:.4f}); "
        f"{result['label']:,} of them were labeled, chosen as below, and each order retrained {seeds} (seeds "
        f"1–{result['seeds']}): warm start from the champion, {epochs} on its images plus the labeled ones, evaluated "
        "on the test set. Gain: test accuracy minus the champion's; mean ± sd over the seeds.",
        "",
        "| labeled images chosen | labeled | champion's error rate on them | test accuracy | **gain** "
        "| gain per seed | s per retraining |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for order, row in summary.items():
        error = "–" if row["error_on_labeled"] is None else f"{row['error_on_labeled']:.3f}"
        lines.append(
            f"| {descriptions[order]} | {row['labeled']:,} | {error} | {row['accuracy'][0]:.4f} ± "
            f"{row['accuracy'][1]:.4f} | **{row['gain'][0]:+.4f} ± {row['gain'][1]:.4f}** | "
            f"{', '.join(f'{gain:+.4f}' for gain in row['gains'])} | {row['seconds']:.0f} |"
        )
    if "none" in summary:
        baseline = summary["none"]["gain"][0]
        beyond = ", ".join(
            f"{descriptions[order].split(' (')[0]} {row['gain'][0] - baseline:+.4f}"
            for order, row in summary.items()
            if order != "none"
        )
        lines += ["", f"Gain of the labels beyond retraining alone (mean gain minus `none`'s): {beyond}."]
    lines += ["", f"**Verdict: {retrain_verdict(summary)}.**", "", f"Part 1 took {result['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


# --- part 2: the queue, through the service -----------------------------------------------------------


def resolve_queue_model(spec: str, data_dir: Path) -> tuple[str, Path | None, str]:
    """(the service's --model, the registry to link into the scratch data dir or None, a description).
    `spec`: a data dir (its registry's champion), or what `--model` accepts, located in `data_dir`'s registry
    and pinned: a champion is served by its version name, so a promotion meanwhile does not switch models."""
    path = Path(spec).expanduser()
    registry = DataLayout(data_dir).registry
    if path.is_dir() and (path / "registry").is_dir():
        spec, registry = store.ALIAS, path / "registry"
    try:
        found = locate(spec, registry)
    except ModelNotFound as error:
        raise ModelNotFound(f"--queue-model {spec}: {str(error).removeprefix(f'--model {spec}: ')}") from None
    if isinstance(found, store.Version):
        return (
            found.name,
            found.directory.parents[1],
            f"{found.name} (`{found.preset}`) of {found.directory.parents[1]}",
        )
    return str(found.resolve()), registry if registry.is_dir() else None, str(found)


def scratch_data_dir(root: Path, data_dir: Path, registry: Path | None) -> Path:
    """A data dir of links (the images, the model's registry) with its own, empty monitoring folder."""
    scratch = root / "data"
    scratch.mkdir()
    (scratch / "parquet").symlink_to(DataLayout(data_dir).parquet.resolve())
    if registry is not None:
        (scratch / "registry").symlink_to(registry.resolve())
    return scratch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def service(data_dir: Path, model: str, log: Path, startup_timeout: float = 300) -> Iterator[str]:
    """`python serving/app.py` on 127.0.0.1 (as the tests start it), until /health answers 200; stopped with
    SIGTERM (its prediction log is flushed on the way out), SIGKILL after 60 s."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "serving/app.py", "--data-dir", str(data_dir), "--port", str(port), "--model", model]
    # no review token: on loopback the review endpoints then answer without one (serving.access)
    env = {name: value for name, value in os.environ.items() if name != "CIFARFLOW_REVIEW_TOKEN"}
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"serving/app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the service did not serve a model in {startup_timeout:g} s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def post_images(url: str, pixels: np.ndarray) -> list[str]:
    """Each image as a PNG, `POST_BATCH` to a /predict/batch request; the prediction ids, in order."""
    import httpx

    ids: list[str] = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for start in range(0, len(pixels), POST_BATCH):
            files = [
                ("file", (f"{start + i:05d}.png", png(p), "image/png"))
                for i, p in enumerate(pixels[start : start + POST_BATCH])
            ]
            answer = client.post("/predict/batch", files=files)
            if answer.status_code != 200:
                raise RuntimeError(f"/predict/batch answered {answer.status_code}: {answer.text[:500]}")
            ids += [item["prediction_id"] for item in answer.json()]
            if start // POST_BATCH % 20 == 19:
                print(f"  served {len(ids):,} of {len(pixels):,}", flush=True)
    return ids


def fetch_review_queue(url: str, n: int) -> dict | str:
    """GET /review/queue?n=…: its JSON, or a sentence saying why there is none."""
    import httpx

    try:
        answer = httpx.get(f"{url}/review/queue", params={"n": n}, timeout=120)
    except httpx.TransportError as error:
        return f"no answer: {error}"
    if answer.status_code != 200:
        return f"GET /review/queue answered {answer.status_code}: {answer.text[:300]}"
    return answer.json()


def queue_agreement(queue: dict | str, ids: np.ndarray, probabilities: np.ndarray) -> dict:
    """How the service's queue compares with `least_confident_first(…, DEFAULT_MEASURE)` on the same rows."""
    if isinstance(queue, str):
        return {"checked": False, "problem": queue}
    served = [item["prediction_id"] for item in queue.get("items", [])]
    expected = list(ids[least_confident_first(probabilities, DEFAULT_MEASURE)[: len(served)]])
    same_prefix = next((i for i, (a, b) in enumerate(zip(served, expected)) if a != b), len(served))
    return {
        "checked": True,
        "measure": queue.get("measure"),
        "unanswered": queue.get("unanswered"),
        "items": len(served),
        "same_order": served == expected,
        "same_prefix": same_prefix,
        "overlap": len(set(served) & set(expected)),
    }


def error_rates(wrong: np.ndarray, probabilities: np.ndarray, n: int, draws: int) -> dict:
    """Per measure, the error rate among the `n` least confident; of `draws` random `n`: mean and sd."""
    rng = np.random.default_rng(QUEUE_DRAW_SEED)
    random_rates = [wrong[rng.choice(len(wrong), n, replace=False)].mean() for _ in range(draws)]
    random_mean, random_sd = mean_sd(random_rates)
    rows = {}
    for measure in MEASURES:
        rate = float(wrong[least_confident_first(probabilities, measure)[:n]].mean())
        rows[measure] = {"rate": rate, "ratio": rate / random_mean if random_mean else float("inf")}
    return {"random": (random_mean, random_sd), "measures": rows}


@dataclass(frozen=True)
class Logged:
    """What the prediction log holds of the served images, in log order, joined with the true labels."""

    ids: np.ndarray  # (N,) str
    probabilities: np.ndarray  # (N, classes) float32
    labels: np.ndarray  # (N,) the true labels
    versions: list[str]  # the model versions that answered
    pixels_differ: int  # logged images whose pixels are not the test image's (PNG round trip, decoding)


def read_logged(log_root: Path, ids: list[str], data: Data) -> Logged:
    """The log's rows of the served images (`ids[i]`: test image i), joined by prediction id."""
    from cifarflow.monitoring.log import read_window

    position = {id_: i for i, id_ in enumerate(ids)}
    rows = [row for row in read_window(log_root) if row.prediction_id in position]
    if len(rows) != len(ids):
        raise RuntimeError(f"the prediction log holds {len(rows)} of the {len(ids)} served images")
    at = np.asarray([position[row.prediction_id] for row in rows])
    pixels = np.stack([row.pixels for row in rows])
    return Logged(
        ids=np.asarray([row.prediction_id for row in rows]),
        probabilities=np.stack([row.probabilities for row in rows]),
        labels=data.test_labels[at],
        versions=sorted({row.model_version for row in rows}),
        pixels_differ=int((pixels != data.test_images[at]).any(axis=(1, 2, 3)).sum()),
    )


def queue_part(args: argparse.Namespace, data: Data, work: Path) -> dict:
    started = time.perf_counter()
    model, registry, described = resolve_queue_model(args.queue_model, args.data_dir)
    count = min(args.queue_images, len(data.test_labels))
    n = min(args.queue_n, count)
    scratch = scratch_data_dir(work, args.data_dir, registry)
    print(f"queue: serving {count:,} test images with {described}", flush=True)
    with service(scratch, model, work / "service.log") as url:
        served_started = time.perf_counter()
        ids = post_images(url, data.test_images[:count])
        served_seconds = time.perf_counter() - served_started
        time.sleep(FLUSH_WAIT_S)
        queue = fetch_review_queue(url, min(n, REVIEW_QUEUE_MAX))
    logged = read_logged(DataLayout(scratch).prediction_log, ids, data)
    wrong = logged.probabilities.argmax(1) != logged.labels
    return {
        "model": described,
        "versions": logged.versions,
        "images": count,
        "n": n,
        "draws": args.random_draws,
        "error_rate": float(wrong.mean()),
        "pixels_differ": logged.pixels_differ,
        "served_seconds": served_seconds,
        "rates": error_rates(wrong, logged.probabilities, n, args.random_draws),
        "review_queue": queue_agreement(queue, logged.ids, logged.probabilities),
        "seconds": time.perf_counter() - started,
    }


def queue_markdown(result: dict) -> str:
    random_mean, random_sd = result["rates"]["random"]
    n = result["n"]
    lines = [
        "## 2. The least confident are the wrong ones",
        "",
        f"{result['model']} served {result['images']:,} test images through the service "
        f"({result['served_seconds']:.0f} s, PNGs, {POST_BATCH} per /predict/batch request; logged versions: "
        f"{', '.join(result['versions'])}); overall error rate {result['error_rate']:.4f}. Logged pixels differing "
        f"from the test images: {result['pixels_differ']}. Random: {result['draws']:,} draws of {n:,} logged "
        "images, mean ± sd. Target: ratio ≥ 2.",
        "",
        f"| measure | error rate, {n:,} least confident | error rate, {n:,} random | **ratio** | ≥ 2 |",
        "|---|---:|---:|---:|---|",
    ]
    for measure, row in result["rates"]["measures"].items():
        default = " (the queue's default)" if measure == DEFAULT_MEASURE else ""
        lines.append(
            f"| `{measure}`{default} | {row['rate']:.4f} | {random_mean:.4f} ± {random_sd:.4f} | "
            f"**{row['ratio']:.2f}** | {'yes' if row['ratio'] >= 2 else 'NO'} |"
        )
    check = result["review_queue"]
    if not check["checked"]:
        lines += ["", f"`GET /review/queue` not checked: {check['problem']}."]
    else:
        agreement = (
            "the same images in the same order"
            if check["same_order"]
            else f"the same first {check['same_prefix']}, {check['overlap']} of {check['items']} images in common"
        )
        lines += [
            "",
            f"`GET /review/queue?n={check['items']}` (measure `{check['measure']}`, {check['unanswered']:,} "
            f'unanswered) against `least_confident_first(…, "{DEFAULT_MEASURE}")` on the logged probabilities: '
            f"{agreement}.",
        ]
    lines += ["", f"Part 2 took {result['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


# --- the command ----------------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="an ingested data dir")
    parser.add_argument("--model", default="classic", choices=sorted(PRESETS), help="part 1's preset (default classic)")
    parser.add_argument("--train", type=int, default=40_000, help="training images of the champion")
    parser.add_argument("--traffic", type=int, default=10_000, help="training images served as traffic")
    parser.add_argument("--label", type=int, default=1_000, help="of the traffic, how many are labeled")
    parser.add_argument("--seeds", type=int, default=3, help="retrainings per order (seeds 1..N)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each warm-started retraining")
    parser.add_argument("--champion-epochs", type=int, help="the champion's epochs (default: the preset's)")
    parser.add_argument("--orders", type=comma_list(str), default=list(ORDERS), help=f"of {', '.join(ORDERS)}")
    parser.add_argument("--measure", default=DEFAULT_MEASURE, choices=MEASURES, help="part 1's least-confident order")
    parser.add_argument(
        "--queue-model", help="part 2's model: champion, vN, a data dir (its champion), a path; without it, no part 2"
    )
    parser.add_argument("--queue-images", type=int, default=10_000, help="test images served in part 2")
    parser.add_argument("--queue-n", type=int, default=500, help="the least-confident set's size in part 2")
    parser.add_argument("--random-draws", type=int, default=1_000, help="random sets drawn for part 2's baseline")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--retrain-only", action="store_true", help="part 1 only")
    which.add_argument("--queue-only", action="store_true", help="part 2 only (needs --queue-model)")
    parser.add_argument("--out", type=Path, help="also write the markdown to this file")
    parser.add_argument("--json", type=Path, help="also write the measurements, with the options, as JSON")
    return parser


def check_arguments(parser: ArgumentParser, args: argparse.Namespace) -> tuple[bool, bool]:
    """(run part 1, run part 2); an unusable option ends the command (exit 2)."""
    for name in ("train", "traffic", "label", "seeds", "epochs", "queue_images", "queue_n", "random_draws"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.champion_epochs is not None and args.champion_epochs < 1:
        parser.error(f"--champion-epochs must be at least 1, got {args.champion_epochs}")
    if args.label > args.traffic:
        parser.error(f"--label {args.label} is more than the --traffic {args.traffic} images it is chosen from")
    unknown = [order for order in args.orders if order not in ORDERS]
    if unknown or not args.orders:
        parser.error(f"--orders: {', '.join(unknown) or 'none given'}; choose from {', '.join(ORDERS)}")
    if args.queue_only and not args.queue_model:
        parser.error("--queue-only needs --queue-model (champion, a version, or a data dir with a champion)")
    args.data_dir = args.data_dir.resolve()
    if not DataLayout(args.data_dir).shard_manifest.is_file():
        raise PipelineInputError(f"no ingested data in {args.data_dir}: run the ingest stage first (`make run`)")
    rows = read_json(DataLayout(args.data_dir).shard_manifest)["splits"]["train"]["rows"]
    if not args.queue_only and args.train + args.traffic > rows:
        parser.error(f"--train {args.train:,} + --traffic {args.traffic:,} is more than the {rows:,} training images")
    if args.queue_model and not args.retrain_only:
        resolve_queue_model(args.queue_model, args.data_dir)  # ModelNotFound now, not after part 1
    return not args.queue_only, bool(args.queue_model) and not args.retrain_only


def run(args: argparse.Namespace, parts: tuple[bool, bool]) -> int:
    retrain, queue = parts
    started = time.perf_counter()
    data = load_data(args.data_dir, need_train=retrain)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-feedback-") as root:
        if retrain:
            (Path(root) / "retrain").mkdir()
            results["retrain"] = retrain_part(args, data, Path(root) / "retrain")
        if queue:
            (Path(root) / "queue").mkdir()
            results["queue"] = queue_part(args, data, Path(root) / "queue")
    text = (
        f"# Learning from use, measured\n\n{datetime.now(UTC):%Y-%m-%d}, {machine()}; code {code_version()}; "
        f"data {args.data_dir}. `python benchmarks/bench_feedback.py {' '.join(sys.argv[1:])}`\n\n"
    )
    text += "\n".join(
        ([retrain_markdown(results["retrain"])] if retrain else [])
        + ([queue_markdown(results["queue"])] if queue else [])
    )
    print(text, flush=True)
    if args.out:
        args.out.write_text(text)
    if args.json:
        write_json(args.json, {"options": vars(args), "code": code_version(), **results})
    parts_done = []
    if retrain:
        parts_done.append(retrain_verdict(retrain_summary(results["retrain"])).split(":")[0])
    if queue:
        ratio = results["queue"]["rates"]["measures"][DEFAULT_MEASURE]["ratio"]
        parts_done.append(f"{DEFAULT_MEASURE} error-rate ratio {ratio:.2f} ({'≥' if ratio >= 2 else '<'} 2)")
    return done(f"{'; '.join(parts_done)} ({time.perf_counter() - started:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_cli(parser, lambda args: check_arguments(parser, args), run, argv, what="the feedback benchmark")


if __name__ == "__main__":
    sys.exit(main())
