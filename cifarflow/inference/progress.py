"""A progress line for long batch jobs, readable in a terminal and in the Prefect UI's logs alike."""

from __future__ import annotations

import time
from collections.abc import Callable

WIDTH = 24


class ProgressLog:
    """Calls `log` with a bar, the count and the rate; at most every `every_s` seconds, and at the end.
    Returns whether it logged, so other progress displays can follow the same pace."""

    def __init__(self, log: Callable[[str], None], every_s: float = 2.0):
        self.log, self.every_s = log, every_s
        self.started = self.last = time.perf_counter()

    def __call__(self, done: int, total: int, failed: int) -> bool:
        now = time.perf_counter()
        if done < total and now - self.last < self.every_s:
            return False
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        filled = round(WIDTH * done / total) if total else WIDTH
        self.log(
            f"scored {done:,}/{total:,} [{'#' * filled}{'-' * (WIDTH - filled)}] {done / max(total, 1):.0%} · "
            f"{failed:,} could not be scored · {rate:,.0f} images/s"
        )
        return True
