"""A real `prefect server start` in a subprocess, for tests that drive the CLI, workers or the UI.

Unlike `prefect_test_harness` (in-process settings only), this server is reachable by other
processes: `prefect deploy`, `prefect worker start`, the flow's own CLI, a browser. Each server
has its own PREFECT_HOME (SQLite database) under the test's tmp dir and is stopped with SIGTERM.
"""

from __future__ import annotations

from cifarflow.environment import OFFLINE_DEFAULTS

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class LiveServer:
    url: str  # the UI
    api_url: str
    env: dict[str, str]  # environment for clients: PREFECT_API_URL, PREFECT_HOME, offline switches
    log: Path

    def run(self, *args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        """Run a command against this server (cwd: the repository root), capturing its output."""
        return subprocess.run(
            list(args), cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def client_settings(self):
        """`with server.client_settings(): get_client()` talks to this server from the test process."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        return temporary_settings({PREFECT_API_URL: self.api_url})


def _wait_healthy(api_url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def live_prefect_server(tmp_dir: Path, startup_timeout: float = 120) -> Iterator[LiveServer]:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # not the test's PREFECT_HOME
    env = (
        inherited
        | OFFLINE_DEFAULTS
        | {
            "PREFECT_HOME": str(tmp_dir / "prefect-home"),
            "PREFECT_API_URL": api_url,  # the server also gives it to the UI (`--port` alone does not)
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
    )
    log = tmp_dir / "server.log"
    with open(log, "w") as log_handle:
        process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_dir,
            env=env,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_healthy(api_url, process, log, startup_timeout)
            yield LiveServer(f"http://127.0.0.1:{port}", api_url, env, log)
        finally:
            stop(process)


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (Prefect's servers, workers and `serve` shut down cleanly on it), then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
