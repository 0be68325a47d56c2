"""The service's micro-batcher (cifarflow/inference/batcher.py): concurrent requests scored in one
call, each request getting exactly its own rows, calls never mixing two models, errors delivered."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cifarflow.inference.batcher import MicroBatcher
from cifarflow.inference.predictor import Predictor


def recording_predictor(name: str, calls: list, delay_s: float = 0.05, shift: int = 0) -> Predictor:
    """Row i's probabilities encode the image's first pixel (+ `shift`, which tells two models apart),
    so a row given to the wrong request, or scored by the wrong model, shows."""

    def probabilities(pixels: np.ndarray) -> np.ndarray:
        calls.append((name, len(pixels)))
        time.sleep(delay_s)  # a model call long enough for other requests to queue behind it
        out = np.zeros((len(pixels), 10), np.float32)
        out[np.arange(len(pixels)), (pixels[:, 0, 0, 0].astype(int) + shift) % 10] = 1.0
        out[:, 0] += pixels[:, 0, 0, 1] / 1000.0
        return out

    return Predictor(name, [str(i) for i in range(10)], 32, probabilities)


def images(tag: int, count: int) -> np.ndarray:
    pixels = np.zeros((count, 32, 32, 3), np.uint8)
    pixels[:, 0, 0, 0] = tag
    pixels[:, 0, 0, 1] = np.arange(count)
    return pixels


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    calls: list = []
    predictor = recording_predictor("v1", calls)
    batcher = MicroBatcher()
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda n: batcher.probabilities(predictor, images(n, 1 + n % 3)), range(48)))
    finally:
        batcher.close()
    for n, result in enumerate(results):
        expected = np.zeros((1 + n % 3, 10), np.float32)
        expected[:, n % 10] = 1.0
        expected[:, 0] += np.arange(1 + n % 3) / 1000.0
        np.testing.assert_allclose(result, expected, atol=1e-6)
    assert sum(size for _, size in calls) == sum(1 + n % 3 for n in range(48))
    assert len(calls) < 48 and max(size for _, size in calls) > 3  # requests were scored together


def test_a_batch_never_mixes_two_models_and_errors_reach_their_requests():
    calls: list = []
    old, new = recording_predictor("v1", calls), recording_predictor("v2", calls, shift=1)

    def broken(pixels):
        raise RuntimeError("model failed")

    bad = Predictor("v3", [str(i) for i in range(10)], 32, broken)
    batcher = MicroBatcher()
    try:
        gate = threading.Event()
        with ThreadPoolExecutor(12) as pool:
            futures = [
                pool.submit(lambda p=p, n=n: (gate.wait(), batcher.probabilities(p, images(n, 2)))[1])
                for n, p in enumerate([old, new] * 5)
            ]
            failing = pool.submit(lambda: batcher.probabilities(bad, images(7, 1)))
            gate.set()
            results = [f.result() for f in futures]
            with pytest.raises(RuntimeError, match="model failed"):
                failing.result()
        assert batcher.probabilities(old, images(3, 1)).shape == (1, 10)  # the worker survived the error
    finally:
        batcher.close()
    for n, result in enumerate(results):  # requests alternate v1, v2: each got its own model's answer
        assert result.shape == (2, 10) and (result.argmax(axis=1) == (n + n % 2) % 10).all(), (n, result)
    assert {name for name, _ in calls} == {"v1", "v2"}  # each call ran one model only (v3 raised before recording)


def test_max_images_caps_a_call():
    calls: list = []
    predictor = recording_predictor("v1", calls)
    batcher = MicroBatcher(max_images=4)
    try:
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(lambda n: batcher.probabilities(predictor, images(n, 1)), range(24)))
    finally:
        batcher.close()
    assert max(size for _, size in calls) <= 4 and sum(size for _, size in calls) == 24
