"""The team setup, end to end on one machine: a throwaway PostgreSQL cluster, `prefect server start`
on it, and a pipeline run on synthetic data reported to that server.

Needs PostgreSQL's server binaries (Debian: `apt-get install -y postgresql`; they live in
/usr/lib/postgresql/<version>/bin, or set PG_BIN). PostgreSQL refuses to run as root, so as root the
cluster runs as the `postgres` user (made by the Debian package) through `runuser`.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _pg_bin() -> Path | None:
    candidates = [os.environ.get("PG_BIN", "")] + sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if which := shutil.which("pg_ctl"):
        candidates.append(str(Path(which).parent))
    for directory in filter(None, candidates):
        if (Path(directory) / "initdb").is_file() and (Path(directory) / "pg_ctl").is_file():
            return Path(directory)
    return None


def _run_as() -> list[str] | None:
    """How to run PostgreSQL: as ourselves, or (as root) as `postgres`; None if impossible."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") and subprocess.run(["id", "-u", "postgres"], capture_output=True).returncode == 0:
        return ["runuser", "-u", "postgres", "--"]
    return None


PG_BIN = _pg_bin()
RUN_AS = _run_as()
pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        PG_BIN is None, reason="PostgreSQL server binaries not found (apt-get install -y postgresql, or set PG_BIN)"
    ),
    pytest.mark.skipif(RUN_AS is None, reason="running as root without a 'postgres' user and runuser to drop to"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(check, timeout_s: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: process exited ({process.returncode})\n{log.read_text() if log else ''}")
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what}: not ready after {timeout_s:.0f} s\n{log.read_text()[-4000:] if log else ''}")


@pytest.fixture
def postgres_url():
    """A PostgreSQL cluster in a temporary directory on 127.0.0.1 and a free port, trust auth; removed after."""
    root = Path(tempfile.mkdtemp(prefix="pg-test-"))  # under /tmp: reachable by the postgres user
    data, log = root / "data", root / "postgres.log"
    if RUN_AS:
        shutil.chown(root, "postgres")
    port = _free_port()
    pg = [*RUN_AS, str(PG_BIN / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [*RUN_AS, str(PG_BIN / "initdb"), "-D", str(data), "-U", "prefect", "-A", "trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    subprocess.run([*pg, "-o", options, "-l", str(log), "-w", "-t", "60", "start"], check=True, capture_output=True)
    try:
        createdb = [*RUN_AS, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect"]
        if not Path(createdb[len(RUN_AS)]).is_file():
            createdb[len(RUN_AS)] = "createdb"
        subprocess.run(createdb, check=True, capture_output=True)
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect", port
    finally:
        subprocess.run([*pg, "-m", "fast", "-w", "-t", "60", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def prefect_on_postgres(postgres_url, tmp_path):
    """`prefect server start` against the PostgreSQL database; stopped with SIGTERM."""
    url, _ = postgres_url
    port = _free_port()
    log = tmp_path / "prefect-server.log"
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "server-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": url,
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    api = f"http://127.0.0.1:{port}/api"
    try:
        _wait_until(
            lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 180, "prefect server", server, log
        )
        yield api
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def test_pipeline_run_is_recorded_by_a_server_on_postgres(
    prefect_on_postgres, postgres_url, synthetic_archive, tmp_path
):
    api = prefect_on_postgres
    env = os.environ | {
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(tmp_path / "client-home"),
    }
    command = [
        sys.executable,
        str(REPO_ROOT / "flows" / "cifar_flow.py"),
        "--source",
        str(synthetic_archive),
        "--data-dir",
        str(tmp_path / "data"),
        "--epochs",
        "1",
        "--rows-per-shard",
        "100",
    ]
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    flow_runs = httpx.post(
        f"{api}/flow_runs/filter", json={"flows": {"name": {"any_": ["cifar10-pipeline"]}}}, timeout=30
    ).json()
    assert [r["state"]["type"] for r in flow_runs] == ["COMPLETED"]
    task_runs = httpx.post(
        f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_runs[0]["id"]]}}}, timeout=30
    ).json()
    assert {t["name"] for t in task_runs} >= {
        "ingest",
        "preprocess-unit",
        "train-classic-e1",
        "evaluate-classic",
        "report-classic",
    }
    assert {t["state"]["type"] for t in task_runs} == {"COMPLETED"}

    # and it really is PostgreSQL that holds the run, not a SQLite file next to the server
    _, port = postgres_url
    psql = shutil.which("psql") or str(PG_BIN / "psql")
    query = subprocess.run(
        [
            *RUN_AS,
            psql,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "prefect",
            "-d",
            "prefect",
            "-Atc",
            f"select state_type from flow_run where id = '{flow_runs[0]['id']}'",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert query.stdout.strip() == "COMPLETED"
