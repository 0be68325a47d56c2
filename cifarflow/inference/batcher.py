"""Micro-batching: one worker thread scores the images of every request waiting (up to `MAX_IMAGES`) in one
model call. It never waits for a batch to fill: alone, a request is scored at once."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np

MAX_IMAGES = 256
TIMEOUT_S = 120.0  # a request never waits forever, even if the worker thread were gone


class MicroBatcher:
    """`probabilities` scored together with the other requests waiting; `close` stops the worker."""

    def __init__(self, max_images: int = MAX_IMAGES):
        self.max_images = max_images
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def probabilities(self, predictor, pixels: np.ndarray) -> np.ndarray:
        """`predictor.probabilities(pixels)`, scored together with whatever else is waiting."""
        future: Future = Future()
        self._queue.put((predictor, pixels, future))
        return future.result(timeout=TIMEOUT_S)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _take(self) -> list | None:
        first = self._queue.get()
        if first is None:
            return None
        items, count = [first], len(first[1])
        while count < self.max_images:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # close after this batch
                break
            items.append(item)
            count += len(item[1])
        return items

    def _run(self) -> None:
        while (items := self._take()) is not None:
            # requests that straddle a champion switch carry different models: one call per model
            for predictor in {id(p): p for p, _, _ in items}.values():
                group = [(pixels, future) for p, pixels, future in items if p is predictor]
                try:
                    scored = predictor.probabilities(np.concatenate([pixels for pixels, _ in group]))
                except Exception as error:  # every waiting request gets the error, the thread goes on
                    for _, future in group:
                        future.set_exception(error)
                    continue
                start = 0
                for pixels, future in group:
                    future.set_result(scored[start : start + len(pixels)])
                    start += len(pixels)
