"""Calibration and robustness of registered models, measured with the calibrate and robustness stages'
own functions on the full test set, and how long the robustness stage takes.

    python benchmarks/bench_trust.py --data-dir data --model champion --out benchmarks/trust.md
    python benchmarks/bench_trust.py --data-dir data --model v1 --out benchmarks/trust.md   # another preset

For the version `--model` names: its network scores the test set with its preset's predictor (what the
evaluate stage does); `calibrate_model` fits the temperature and reports ECE/NLL/Brier before and after
(cross-fitted); `measure_robustness` scores the corruption table, timed (the stage's own figure, model
loading included). Each run replaces its preset's rows in `--out`, so one file holds every preset.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect and TensorFlow are imported

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cifarflow.calibration.calibrate import calibrate_model
from cifarflow.data.transform import load_split
from cifarflow.inference.predictor import locate
from cifarflow.layout import DataLayout
from cifarflow.models.presets import get_preset
from cifarflow.promotion.decision import test_set_id
from cifarflow.robustness.robustness import measure_robustness

BEGIN, END = "<!-- {preset}:begin -->", "<!-- {preset}:end -->"


def features_for(layout: DataLayout, test_set: str) -> Path:
    """A feature set of the data dir holding the test set the version was scored on."""
    for directory in sorted(layout.features.iterdir()):
        try:
            if test_set_id(directory) == test_set:
                return directory
        except (OSError, ValueError, KeyError):
            continue
    raise SystemExit(f"error: no feature set in {layout.features} holds the test set {test_set[:12]}…")


def measure(data_dir: Path, model: str) -> tuple[str, str]:
    layout = DataLayout(data_dir)
    version = locate(model, layout.registry)
    record = version
    features = features_for(layout, record.test_set_sha256)
    preset = get_preset(record.preset)
    with tempfile.TemporaryDirectory(prefix="bench-trust-") as scratch:
        evaluation = Path(scratch) / "evaluation"
        evaluation.mkdir()
        started = time.perf_counter()
        np.save(
            evaluation / "probabilities.npy",
            preset.predict(preset.load(version.directory / "model.keras"), load_split(features, "test", "pixels")),
        )
        predict_s = time.perf_counter() - started
        calibration = calibrate_model(evaluation, features, Path(scratch) / "calibration").summary
        started = time.perf_counter()
        robustness = measure_robustness(
            version.directory / "model.keras",
            record.preset,
            features,
            evaluation / "probabilities.npy",
            (calibration["half_temperatures"]["A"], calibration["half_temperatures"]["B"]),
            Path(scratch) / "robustness",
        ).summary
        robustness_s = time.perf_counter() - started
    before, after = calibration["before"], calibration["after"]
    line = (
        f"| `{record.preset}` {version.name} | {after['accuracy']:.4f} | {calibration['temperature']:.3f} "
        f"| {before['ece']:.4f} → **{after['ece']:.4f}** | {before['nll']:.4f} → {after['nll']:.4f} "
        f"| {before['brier']:.4f} → {after['brier']:.4f} | {before['mean_confidence']:.3f} → "
        f"{after['mean_confidence']:.3f} |"
    )
    calibration_head = (
        "| model | accuracy | T | ECE before → after | NLL before → after | Brier before → after "
        "| mean confidence before → after |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    corruption = " | ".join(f"{np.mean(v['accuracy']):.3f}" for v in robustness["corruptions"].values())
    robustness_head = (
        f"| model | clean | {' | '.join(robustness['corruptions'])} | mean under corruption | its ECE "
        f"| stage time |\n|---|{'---:|' * (len(robustness['corruptions']) + 4)}"
    )
    robust_line = (
        f"| `{record.preset}` {version.name} | {robustness['clean_accuracy']:.3f} | {corruption} "
        f"| **{robustness['mean_corruption_accuracy']:.3f}** | {robustness['mean_corruption_ece']:.3f} "
        f"| {robustness_s:.0f} s |"
    )
    print(json.dumps({"calibration": calibration, "robustness": robustness, "predict_s": round(predict_s, 1)}))
    return record.preset, f"{calibration_head}\n{line}\n\n{robustness_head}\n{robust_line}"


def write_rows(out: Path, preset: str, rows: str, command: str) -> None:
    """Replace `preset`'s block in `out` (made if missing), keeping the other presets'."""
    text = out.read_text() if out.exists() else "# Calibration and robustness, measured\n\n"
    begin, end = BEGIN.format(preset=preset), END.format(preset=preset)
    block = f"{begin}\n`{command}`\n\n{rows}\n{end}\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    out.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--model", default="champion", help="champion, a version (v2) or a version folder")
    parser.add_argument("--out", type=Path, help="markdown file whose block for this preset is replaced")
    args = parser.parse_args(argv)
    preset, rows = measure(args.data_dir, args.model)
    print(rows)
    if args.out:
        command = f"python benchmarks/bench_trust.py --data-dir {args.data_dir} --model {args.model}"
        write_rows(args.out, preset, rows, command)
    print(f"done: {preset} measured{f'; rows in {args.out}' if args.out else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
