"""The prediction service as a user runs it, for tests: `python serving/app.py --data-dir D --port P`
in a subprocess (its own process group, output to a log file), waited on until /health answers,
stopped with SIGTERM (SIGKILL if it does not exit); the same app served by uvicorn in a thread of
the test process, for tests that replace a function it calls; and test images in every accepted format."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from tests.live_server import free_port, stop

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ServingProcess:
    url: str
    port: int
    process: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def wait_until(check, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Call `check()` until it returns something truthy; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout:g} s")
        time.sleep(interval)


@contextlib.contextmanager
def serving_process(
    data_dir: Path,
    log: Path,
    startup_timeout: float = 120,
    options: Sequence[str] = (),
    open_files: int | None = None,
) -> Iterator[ServingProcess]:
    """The service on a free port of 127.0.0.1, answering /health (200, or 503 while it has no model);
    `options`: more command-line options (`--decode-budget 50`); `open_files`: its RLIMIT_NOFILE, soft and
    hard (`ulimit -n`)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "serving/app.py", "--data-dir", str(data_dir), "--port", str(port), *options]
    if open_files is not None:
        command = ["sh", "-c", f'ulimit -n {int(open_files)} && exec "$@"', "sh", *command]
    with open(log, "w") as log_handle:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=os.environ, stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    served = ServingProcess(url, port, process, log)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"serving/app.py exited with {process.returncode}:\n{served.log_tail()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code in (200, 503):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"serving/app.py not answering after {startup_timeout:g} s:\n{served.log_tail()}")
            time.sleep(0.3)
        yield served
    finally:
        stop(process)


@contextlib.contextmanager
def serving_in_thread(app, startup_timeout: float = 120) -> Iterator[str]:
    """`app` (an ASGI app: its lifespan runs) served by uvicorn on a free port of 127.0.0.1 in a daemon
    thread of this process, so a test can monkeypatch what it calls; yields the base URL once /health
    answers 200 (the model is loaded)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-under-test", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return server.started and httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, startup_timeout, what="the in-process service serving a model")
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def app_routes(app) -> list:
    """Every route of a FastAPI app, those of its included routers too (FastAPI ≥ 0.150 nests them)."""
    from fastapi.routing import iter_route_contexts

    return [context.original_route for context in iter_route_contexts(app.routes)]


def flat_png(width: int, height: int) -> bytes:
    """A white RGBA PNG of width × height: a few hundred KB however many pixels (7,000 × 7,000 is
    208 KB), the costliest kind to decode (RGBA, composited on white): a decompression-heavy upload."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (width, height), (255, 255, 255, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


def scene(width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """A (height, width, 3) uint8 picture: a diagonal colour gradient with a disc, some noise; `seed`
    moves the disc and changes the colours, so different seeds give different pictures."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3).astype(np.float32)
    image = base + 50 * np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1)
    cx, cy, r = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height, min(width, height) / 4
    disc = (x - cx) ** 2 + (y - cy) ** 2 < r**2
    image[disc] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None, **options) -> bytes:
    """`pixels` as an image file in `fmt` (PNG, JPEG, WEBP, BMP), converted to `mode` first if given."""
    from PIL import Image

    image = Image.fromarray(pixels)
    if mode == "RGBA":
        alpha = np.full(pixels.shape[:2], 255, np.uint8)
        alpha[: pixels.shape[0] // 2] = 90  # half translucent: composited on white by the service
        image.putalpha(Image.fromarray(alpha))
    elif mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
