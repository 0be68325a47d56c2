"""Memory under huge images: the service's peak RSS while 8 clients each send a 7,000 × 7,000 PNG at
once, with the decode budget at each setting given (0: no budget; freed memory is returned either way).

    .venv/bin/python benchmarks/bench_large_images.py [--data-dir data] [--budgets 50,100,0] [--rounds 3]

The image is a white RGBA PNG: 208 KB on the wire, 49 MP (under the 50 MP limit), and RGBA is the
costliest kind to decode (composited on white: several full-size copies). One service process runs per
setting (`python serving/app.py --decode-budget MP`, uvicorn, on a data dir with a champion: a tiny
`classic` version registered as a promotion registers it, unless --data-dir names one), all started
before the first round; each round sends the 8 requests to each service in turn, so the settings
alternate under the same conditions. Per round and setting: the peak RSS of the service process and
its children (psutil, polled every 10 ms) against its RSS just before, every answer's status (200, or
503 with Retry-After; anything else counts as an error), and the time until the last answer.
Prints a Markdown table, then the median peak of each setting.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect and TensorFlow are imported

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-large-prefect-"))
# The tests' registry and service helpers: a script's path holds benchmarks/, not the repo root. The one
# import that must follow code (this path), not the environment defaults.
sys.path.insert(0, str(REPO_ROOT))
from tests.serving_helpers import ServingProcess, flat_png, serving_process  # noqa: E402

CLIENTS = 8
SIDE = 7000  # pixels: 49 MP, under cifarflow.intake.images.MAX_PIXELS
POLL_S = 0.01
MIN_FREE_PER_IMAGE = 1.2e9  # bytes: a setting whose worst case may not fit in free memory is skipped
GB = 1e9


@dataclass(frozen=True)
class Round:
    budget_mp: float
    base_rss: int  # bytes, just before the requests
    peak_rss: int  # bytes, while they ran
    statuses: list[int]
    retry_after: int  # 503 answers that carried Retry-After
    seconds: float  # until the last answer

    @property
    def errors(self) -> int:
        return sum(s not in (200, 503) for s in self.statuses) + self.statuses.count(503) - self.retry_after


def tree_rss(process: psutil.Process) -> int:
    """RSS of `process` and all its children, bytes (0 for those gone meanwhile)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class PeakRss:
    """Poll a process tree's RSS every POLL_S seconds in a thread while the `with` block runs."""

    def __init__(self, pid: int):
        self.process, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()

    def __enter__(self) -> PeakRss:
        self.base = self.peak = tree_rss(self.process)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.process))
            time.sleep(POLL_S)


def send_at_once(url: str, image: bytes) -> list[tuple[int, bool]]:
    """CLIENTS requests released together (a barrier), each on its own connection: (status, whether
    it carried a Retry-After of whole seconds) per request; status 0 for no answer (connection lost)."""
    start = threading.Barrier(CLIENTS)

    def client(number: int) -> tuple[int, bool]:
        with httpx.Client(base_url=url, timeout=300) as http:
            start.wait()
            try:
                response = http.post("/predict", files={"file": (f"huge-{number}.png", image, "image/png")})
            except httpx.HTTPError:
                return 0, False
            return response.status_code, response.headers.get("retry-after", "").isdigit()

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(client, range(CLIENTS)))


def run_round(server: ServingProcess, budget_mp: float, image: bytes) -> Round:
    with PeakRss(server.process.pid) as rss:
        started = time.monotonic()
        answers = send_at_once(server.url, image)
        seconds = time.monotonic() - started
    statuses = [status for status, _ in answers]
    retry_after = sum(status == 503 and has_retry_after for status, has_retry_after in answers)
    return Round(budget_mp, rss.base, rss.peak, statuses, retry_after, seconds)


def make_data_dir(work: Path) -> Path:
    """A data dir whose registry has one champion (a tiny random-weight `classic` network)."""
    from tests.registry_helpers import add_version

    data_dir = work / "data"
    add_version(data_dir / "registry", seed=1, scratch=work / "scratch", reason="promoted: benchmark")
    return data_dir


def fits_in_memory(budget_mp: float) -> bool:
    """Whether the worst case of this setting (every image decoding at once without a budget) fits."""
    images_at_once = CLIENTS if budget_mp == 0 else max(1, int(budget_mp * 1e6 // (SIDE * SIDE)))
    return psutil.virtual_memory().available > images_at_once * MIN_FREE_PER_IMAGE


def label(budget_mp: float) -> str:
    return "off" if budget_mp == 0 else f"{budget_mp:g} MP"


def table(rounds: list[Round]) -> str:
    lines = [
        "| decode budget | round | peak RSS | RSS before | peak − before | 200 | 503 + Retry-After | errors"
        " | last answer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    number: dict[float, int] = {}
    for r in rounds:
        number[r.budget_mp] = number.get(r.budget_mp, 0) + 1
        lines.append(
            f"| {label(r.budget_mp)} | {number[r.budget_mp]} | {r.peak_rss / GB:.2f} GB | {r.base_rss / GB:.2f} GB | "
            f"{(r.peak_rss - r.base_rss) / GB:.2f} GB | {r.statuses.count(200)} | {r.retry_after} | {r.errors} | "
            f"{r.seconds:.1f} s |"
        )
    return "\n".join(lines)


def summary(rounds: list[Round]) -> str:
    peaks = {
        b: statistics.median(r.peak_rss for r in rounds if r.budget_mp == b)
        for b in dict.fromkeys(r.budget_mp for r in rounds)
    }
    off = peaks.get(0)
    parts = [
        f"{label(b)}: {p / GB:.2f} GB" + (f" ({off / p:.1f}× less than off)" if off and b else "")
        for b, p in peaks.items()
    ]
    return "Median peak RSS: " + "; ".join(parts) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="a data dir with a champion (default: build a tiny one)")
    parser.add_argument("--budgets", default="50,0", help="decode budgets in megapixels, comma-separated; 0: off")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-large-images-"))
    data_dir = args.data_dir or make_data_dir(work)
    image = flat_png(SIDE, SIDE)
    print(
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} cores; {len(image) / 1e3:.0f} KB PNG, "
        f"{SIDE}×{SIDE} RGBA; {CLIENTS} clients at once; {args.rounds} rounds",
        file=sys.stderr,
    )
    rounds: list[Round] = []
    with ExitStack() as stack:
        servers = {
            b: stack.enter_context(
                serving_process(data_dir, work / f"serving-{b:g}.log", options=["--decode-budget", f"{b:g}"])
            )
            for b in budgets
        }
        for server in servers.values():  # the model's first call and TensorFlow's warm-up, outside the measurement
            httpx.post(f"{server.url}/predict", files={"file": ("warm.png", flat_png(64, 64))}, timeout=120)
        for number in range(1, args.rounds + 1):
            for budget, server in servers.items():
                if not fits_in_memory(budget):
                    print(f"round {number}, budget {label(budget)}: skipped, too little free memory", file=sys.stderr)
                    continue
                rounds.append(run_round(server, budget, image))
                print(table(rounds).splitlines()[-1], file=sys.stderr)
    print(table(rounds))
    print()
    print(summary(rounds))


if __name__ == "__main__":
    main()
