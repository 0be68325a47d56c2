"""The smoke test a model passes before it is registered: a *fresh process* loads the exported
artifact, as a server would, and scores a fixed canary set of test images; its predictions must be
the ones evaluation measured with the trained `.keras` model.

Passing means both
* the same top-1 class on at least `MIN_AGREEMENT` of the canary images, and
* every probability within `TOLERANCE` (absolute) of evaluation's.

The canary set is the first `CANARY_PER_CLASS` test images of each class, in test-set order: fixed
for a test set, and every class is in it.

Run as a module it is the fresh process: `python -m cifarflow.registry.smoke EXPORT CANARY.npz OUT.npy`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CANARY_PER_CLASS = 100  # 1,000 images on CIFAR-10: one disagreement in 1,000 is the most 99.9% allows
MIN_AGREEMENT = 0.999
TOLERANCE = 1e-3  # max |Δ probability|; float32 graph vs evaluation's float64 sum of the views is ~1e-6
TIMEOUT_S = 600


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    images: int
    agreement: float  # share of canary images with the same top-1 class
    max_difference: float  # largest absolute probability difference
    seconds: float
    reason: str  # why it failed, or "" when it passed

    def to_json(self) -> dict:
        return asdict(self) | {"min_agreement": MIN_AGREEMENT, "tolerance": TOLERANCE}

    @property
    def summary(self) -> str:
        verdict = "passed" if self.passed else f"FAILED: {self.reason}"
        return (
            f"smoke test {verdict} ({self.images} canary images in a fresh process: top-1 agreement "
            f"{self.agreement:.2%}, max |Δp| {self.max_difference:.1e}, {self.seconds:.1f} s)"
        )


def canary_indices(labels: np.ndarray, per_class: int = CANARY_PER_CLASS) -> np.ndarray:
    """The first `per_class` test images of each class, in test order."""
    labels = np.asarray(labels)
    chosen = [np.flatnonzero(labels == label)[:per_class] for label in np.unique(labels)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def compare_probabilities(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float, str]:
    """The export's probabilities (`actual`) against evaluation's (`expected`) on the canary images:
    (top-1 agreement, max |Δp|, reason it fails or "")."""
    if actual.shape != expected.shape:
        return 0.0, float("inf"), f"the export returned shape {actual.shape}, expected {expected.shape}"
    if not np.isfinite(actual).all():
        return 0.0, float("inf"), "the export returned non-finite probabilities"
    agreement = float(np.mean(actual.argmax(axis=1) == expected.argmax(axis=1))) if len(actual) else 1.0
    difference = float(np.abs(actual.astype(np.float64) - expected).max()) if len(actual) else 0.0
    if agreement < MIN_AGREEMENT:
        return agreement, difference, f"top-1 agreement {agreement:.2%} is below {MIN_AGREEMENT:.1%}"
    if difference > TOLERANCE:
        return agreement, difference, f"a probability differs by {difference:.1e}, over the tolerance {TOLERANCE:g}"
    return agreement, difference, ""


def smoke_test(export_dir: Path, pixels: np.ndarray, expected: np.ndarray, timeout_s: float = TIMEOUT_S) -> SmokeResult:
    """Score `pixels` with the export in a fresh Python process and compare with `expected`."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cifarflow-smoke-") as scratch:
        canary, out = Path(scratch) / "canary.npz", Path(scratch) / "probabilities.npy"
        np.savez(canary, pixels=np.asarray(pixels, np.uint8))
        command = [sys.executable, "-m", "cifarflow.registry.smoke", str(export_dir), str(canary), str(out)]
        try:
            quiet = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}  # so stderr's last line is the error, not a TF notice
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=quiet)
        except subprocess.TimeoutExpired:
            return SmokeResult(False, len(pixels), 0.0, float("inf"), timeout_s, f"no answer in {timeout_s:.0f} s")
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            return SmokeResult(
                False, len(pixels), 0.0, float("inf"), seconds, f"the export did not load or run: {last}"
            )
        actual = np.load(out)
    agreement, difference, reason = compare_probabilities(np.asarray(expected, np.float64), actual)
    return SmokeResult(not reason, len(pixels), agreement, difference, seconds, reason)


def main(argv: list[str]) -> None:
    from cifarflow.registry.export import load_export

    export_dir, canary, out = argv
    model = load_export(Path(export_dir))
    np.save(out, model.probabilities(np.load(canary)["pixels"]))


if __name__ == "__main__":
    main(sys.argv[1:])
