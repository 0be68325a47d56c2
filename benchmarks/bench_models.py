"""Benchmark model presets on a features directory: training throughput and time, test accuracy, peak
memory, and (for the airbench presets) the input pipeline's overhead.

Each model runs in its own subprocess, so its peak RSS (`ru_maxrss`) is its own. Training goes through
`cifarflow.training.run.train_model` (the pipeline's train stage) and accuracy through the evaluate stage's
predictor (TTA for the airbench presets), so the numbers are those of a real pipeline run.

Pipeline overhead: images/s of `fit` fed by the airbench tf.data pipeline (uint8 arrays in memory,
shuffle, batch, prefetch; augmentation and normalization in the graph) against `fit` fed the same
in-memory tensors directly (one pre-built batch repeated from memory: no shuffling, gathering or
batching), after one warm-up epoch each. Overhead = 1 - pipeline / in-memory.

    python benchmarks/bench_models.py --features data/features/unit --out bench.md
    python benchmarks/bench_models.py --models quick --epochs quick=3 --pipeline-steps 10 --out q.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _fit_rate(trainer, data, steps: int, batch_size: int, **fit_kwargs) -> float:
    """Images/s of the second of two `steps`-step epochs (the first traces and warms up)."""
    import keras

    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.started)

    trainer.fit(data, epochs=2, steps_per_epoch=steps, callbacks=[Timer()], verbose=0, shuffle=False, **fit_kwargs)
    return steps * batch_size / times[-1]


def pipeline_overhead(model: str, features: Path, steps: int, batch_size: int) -> dict[str, float]:
    import numpy as np
    import tensorflow as tf

    from cifarflow.data.transform import load_split, read_features
    from cifarflow.models.precision import choose_policy, configure_threads, dtype_policy
    from cifarflow.models.presets import get_preset
    from cifarflow.training import airbench_loop
    from cifarflow.training.run import TrainSettings

    settings = TrainSettings(model, 1000, batch_size, get_preset(model).learning_rate, 0)
    pixels = np.ascontiguousarray(load_split(features, "train", "pixels"))
    labels = np.ascontiguousarray(load_split(features, "train", "labels")).astype(np.int32)
    configure_threads()
    with dtype_policy(choose_policy()):
        found = read_features(features)
        classes = len(found.label_names)
        trainer, dataset = airbench_loop.make_trainer(
            settings, pixels, labels, found.normalization, num_classes=classes
        )
        pipeline = _fit_rate(trainer, dataset.repeat(), steps, batch_size)
        flips = np.zeros(batch_size, np.uint8)
        batch = ((tf.constant(pixels[:batch_size]), tf.constant(flips)), tf.constant(labels[:batch_size]))
        in_memory = _fit_rate(trainer, tf.data.Dataset.from_tensors(batch).repeat(), steps, batch_size)
    return {"pipeline_img_s": pipeline, "in_memory_img_s": in_memory, "overhead": 1 - pipeline / in_memory}


def worker(model: str, features: Path, epochs: int | None, pipeline_steps: int) -> dict:
    """Train and evaluate one model in this process; returns the measurements."""
    import numpy as np

    from cifarflow.data.transform import load_split
    from cifarflow.models.presets import get_preset
    from cifarflow.training.run import TrainSettings, train_model

    preset = get_preset(model)
    airbench = preset.trainer.endswith(":fit_airbench")  # drops the last partial batch; has a tf.data pipeline
    settings = TrainSettings(model, epochs or preset.epochs, preset.batch_size, preset.learning_rate, seed=0)
    n_train = len(load_split(features, "train", "labels"))
    images_per_epoch = n_train // settings.batch_size * settings.batch_size if airbench else n_train
    row: dict = {"model": model, "epochs": settings.epochs, "batch_size": settings.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = train_model(settings, features, Path(tmp) / "model", verbose=0)
        row["train_wall_s"] = time.perf_counter() - started
        row["train_cpu_s"] = time.process_time() - cpu_started
        row["train_s"] = result.train_seconds  # sum of the epochs' own times (what the pipeline reports)
        row["params"] = result.params
        row["train_img_s"] = images_per_epoch * result.epochs / result.train_seconds
        loaded = preset.load(result.model_path)
        started = time.perf_counter()
        probabilities = preset.predict(loaded, load_split(features, "test", "pixels"))
        row["eval_s"] = time.perf_counter() - started
        labels = np.asarray(load_split(features, "test", "labels")).astype(int)
        row["test_accuracy"] = float((probabilities.argmax(1) == labels).mean())
        row["tta"] = preset.tta
    if airbench and pipeline_steps > 0:
        row |= pipeline_overhead(model, features, pipeline_steps, settings.batch_size)
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["load_avg_1m_end"] = os.getloadavg()[0]
    return row


def markdown(rows: list[dict], note: str) -> str:
    def fmt(value, spec):
        return "–" if value is None else format(value, spec)

    lines = [
        "| model | params | epochs | batch | train s | train img/s | test acc | TTA | peak RSS MiB "
        "| pipeline img/s | in-memory img/s | overhead |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} |" + " |" * 10)
            continue
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['epochs']} | {r['batch_size']} | {r['train_s']:.0f} "
            f"| {r['train_img_s']:.0f} | {r['test_accuracy']:.4f} | {r['tta']} | {r['peak_rss_mib']:.0f} "
            f"| {fmt(r.get('pipeline_img_s'), '.0f')} | {fmt(r.get('in_memory_img_s'), '.0f')} "
            f"| {fmt(r.get('overhead'), '+.1%')} |"
        )
    return "\n".join(lines) + "\n\n" + note + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=REPO / "data" / "features" / "unit")
    from cifarflow.models.presets import PRESETS  # no TensorFlow: the registry resolves references lazily

    parser.add_argument("--models", nargs="+", default=list(PRESETS))
    parser.add_argument("--epochs", nargs="*", default=[], metavar="MODEL=N", help="override a preset's epochs")
    parser.add_argument("--pipeline-steps", type=int, default=8, help="steps per timed epoch; 0 skips it")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    parser.add_argument("--json", type=Path, help="also write the raw rows as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    epochs = {k: int(v) for k, v in (item.split("=", 1) for item in args.epochs)}

    if args.worker:
        sys.path.insert(0, str(REPO))
        row = worker(args.worker, args.features, epochs.get(args.worker), args.pipeline_steps)
        print("BENCH_ROW " + json.dumps(row), flush=True)
        return 0

    rows = []
    for model in args.models:
        command = [
            sys.executable,
            __file__,
            "--worker",
            model,
            "--features",
            str(args.features),
            "--pipeline-steps",
            str(args.pipeline_steps),
            "--out",
            os.devnull,
            "--epochs",
            *args.epochs,
        ]
        print(f"== {model}", flush=True)
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        found = [line for line in done.stdout.splitlines() if line.startswith("BENCH_ROW ")]
        if done.returncode or not found:
            print(done.stderr[-3000:], file=sys.stderr)
            rows.append({"model": model, "error": f"exit {done.returncode}"})
            continue
        rows.append(json.loads(found[-1].removeprefix("BENCH_ROW ")))
        print(json.dumps(rows[-1]), flush=True)

    note = (
        f"Machine: {os.cpu_count()} CPUs ({_cpu_name()}), mixed precision: "
        f"{os.environ.get('CIFAR_MIXED_PRECISION', 'auto')}; 1-min load average at the end of each run: "
        + ", ".join(f"{r['model']} {r['load_avg_1m_end']:.1f}" for r in rows if "load_avg_1m_end" in r)
        + ". A load above the CPU count means other processes shared the cores and times are inflated."
    )
    table = markdown(rows, note)
    args.out.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(table)
    return 0 if all("error" not in r for r in rows) else 1


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
