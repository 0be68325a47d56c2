"""How far a champion's reported test accuracy drifts above its true accuracy when the same test set
decides promotion night after night, and what splitting the test set buys.

    python benchmarks/bench_test_reuse.py --out benchmarks/test_reuse.md

A simulation of `--nights` nightly retrains of an unchanged recipe (no model is truly better than
another, up to seed noise), repeated `--years` times, under three schemes:

* **shared**: McNemar's gate (exact, alpha 0.05, the promote stage's `decide`) and the reported
  figure both use all `--test-images` test images (the pipeline before the test-set halves);
* **halves**: the gate uses one half of the test set, the figure is reported on the other half;
* **no gate**: the shared test set, and any challenger with a higher accuracy is promoted (what the
  gate prevents).

The model of a test set (Beta-binomial): image i is answered right by a model of the recipe with
probability q_i ~ Beta(a, b), independently across models, mean `--accuracy`; a + b is set so two
models disagree on `--disagreement` of the images (2 E[q(1−q)]). A model's seed shifts every q_i by
δ ~ N(0, `--seed-sd`) on the logit scale: its true accuracy is E[sigmoid(logit q + δ)] over the
population (a 200,000-image sample), its reported accuracy the share it gets right on the test images.
A second run pits one truly better challenger (+`--better` accuracy) against a fresh champion and
counts how often each scheme promotes it (the power the halves give up).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from cifarflow.promotion.mcnemar import mcnemar_test


def beta_params(accuracy: float, disagreement: float) -> tuple[float, float]:
    """Beta(a, b) with mean `accuracy` under which two independent models disagree on `disagreement` of images."""
    total_var = accuracy * (1 - accuracy)
    concentration = disagreement / (2 * total_var - disagreement)  # a + b, from 2(μ(1−μ) − Var q) = d
    return accuracy * concentration, (1 - accuracy) * concentration


def logit(q: np.ndarray) -> np.ndarray:
    q = np.clip(q, 1e-9, 1 - 1e-9)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def true_accuracy_curve(args, rng: np.random.Generator):
    """A model's population accuracy as a function of its logit shift δ (interpolated on a grid)."""
    a, b = beta_params(args.accuracy, args.disagreement)
    population = logit(rng.beta(a, b, 200_000))
    grid = np.linspace(-1.0, 2.0, 1501)
    values = np.array([sigmoid(population + d).mean() for d in grid])
    return lambda delta: float(np.interp(delta, grid, values))


def simulate(args, scheme: str, rng: np.random.Generator, truth, better_night: int | None = None) -> dict:
    a, b = beta_params(args.accuracy, args.disagreement)
    test = logit(rng.beta(a, b, args.test_images))
    selection = rng.random(args.test_images) < 0.5 if scheme == "halves" else np.ones(args.test_images, bool)
    report = ~selection if scheme == "halves" else selection

    def new_model(shift: float):
        delta = rng.normal(0, args.seed_sd) + shift
        correct = rng.random(args.test_images) < sigmoid(test + delta)
        return correct, truth(delta)

    champion, true_accuracy = new_model(0.0)
    promotions, caught = 0, False
    for night in range(args.nights if better_night is None else better_night + 1):
        shift = args.better_shift if night == better_night else 0.0
        challenger, challenger_true = new_model(shift)
        old, new = champion[selection], challenger[selection]
        gate = scheme == "no gate" or mcnemar_test(old, new).p_value < args.alpha
        if new.mean() > old.mean() and gate:
            champion, true_accuracy = challenger, challenger_true
            promotions += 1
            caught = caught or night == better_night
    return {"bias": float(champion[report].mean() - true_accuracy), "promotions": promotions, "caught": caught}


def shift_for(args) -> float:
    """The logit shift that raises the recipe's mean accuracy by `--better`."""
    a, b = beta_params(args.accuracy, args.disagreement)
    population = logit(np.random.default_rng(0).beta(a, b, 200_000))
    low, high = 0.0, 3.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if sigmoid(population + mid).mean() - args.accuracy < args.better else (low, mid)
    return (low + high) / 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--years", type=int, default=200, help="independent simulated years per scheme")
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--accuracy", type=float, default=0.91, help="the recipe's mean accuracy (fast: 0.91)")
    parser.add_argument("--disagreement", type=float, default=0.06, help="share of images two runs disagree on")
    parser.add_argument("--seed-sd", type=float, default=0.01, help="sd of a run's logit shift (seed noise)")
    parser.add_argument("--better", type=float, default=0.005, help="accuracy edge of the one better challenger")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.better_shift = shift_for(args)
    started = time.perf_counter()
    truth = true_accuracy_curve(args, np.random.default_rng(0))
    rows = []
    for scheme in ("shared", "halves", "no gate"):
        rng = np.random.default_rng(2026)
        runs = [simulate(args, scheme, rng, truth) for _ in range(args.years)]
        power = [simulate(args, scheme, rng, truth, better_night=0)["caught"] for _ in range(args.years)]
        bias = np.array([r["bias"] for r in runs])
        rows.append(
            f"| {scheme} | {bias.mean() * 100:+.2f} ± {bias.std(ddof=1) / np.sqrt(len(bias)) * 100:.2f} "
            f"| {bias.std(ddof=1) * 100:.2f} | {np.sqrt(np.mean(bias**2)) * 100:.2f} "
            f"| {np.mean([r['promotions'] for r in runs]):.1f} "
            f"| {np.mean(power):.0%} |"
        )
        print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# Test-set reuse: reported minus true accuracy after a year of nightly promotions",
            "",
            f"`python benchmarks/bench_test_reuse.py` ({args.years} simulated years of {args.nights} nights, "
            f"{args.test_images:,} test images, recipe accuracy {args.accuracy}, runs disagreeing on "
            f"{args.disagreement:.0%} of images, seed logit sd {args.seed_sd}, McNemar exact at alpha {args.alpha}; "
            f"{time.perf_counter() - started:.0f} s).",
            "",
            "| scheme | champion's reported − true accuracy after a year, points (mean ± se) | sd across years "
            f"| root-mean-square error | promotions a year | power: a +{args.better * 100:.1f}-point challenger "
            "promoted |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    if args.out:
        args.out.write_text(text)
    print(text)
    print(f"done: {args.years} years per scheme simulated{f'; table in {args.out}' if args.out else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
