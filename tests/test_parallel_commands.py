"""Commands started side by side (two cron jobs, a shell loop) on a fresh, empty PREFECT_HOME, with no
Prefect server configured: each starts Prefect's temporary server, one at a time (cifarflow.cli), and
every one completes; on a busy machine too. And every command's outcome is its last stdout line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarflow.cli import ArgumentParser
from cifarflow.lock import data_dir_lock
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.server  # the commands start Prefect's temporary servers of their own: not the unit tier


def fresh_home_env(home: Path) -> dict[str, str]:
    """No PREFECT_API_URL: each command starts its own temporary server, on an empty PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return env | {"PREFECT_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def busy_loops(count: int) -> list[subprocess.Popen]:
    """Processes that keep the cores busy, as a nightly retrain does while a cron job starts."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def test_commands_started_at_once_on_a_fresh_home_all_complete_on_a_busy_machine(two_versions, tmp_path):
    """Two batch predictions at the same moment, both cores busy (before the start-up lock: 0 of 3 such
    commands completed, each timing out on the temporary server)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(photos / "a.png")
    env = fresh_home_env(tmp_path / "prefect-home")  # does not exist yet: the first start creates its database
    load = busy_loops(1)  # and the suite's other worker: both cores busy
    try:
        commands = [
            subprocess.Popen(
                [sys.executable, "flows/predict_flow.py", str(photos), "--data-dir", str(two_versions)]
                + ["--out", str(tmp_path / f"scored-{n}.parquet")],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(2)
        ]
        results = [(c.wait(timeout=540), *c.communicate()) for c in commands]
    finally:
        for process in load:
            process.terminate()
            process.wait()
    for n, (code, out, err) in enumerate(results):
        assert code == 0 and out.strip().splitlines()[-1].startswith("done: predictions at "), (out, err[-3000:])
        assert "Traceback" not in err and (tmp_path / f"scored-{n}.parquet").is_file()
    said = "".join(err for _, _, err in results)
    assert "waiting for the command that starts Prefect's temporary server" in said  # one waited, and said so


def test_the_lock_lets_one_holder_in_at_a_time_and_says_once_that_it_waits(tmp_path):
    lock, said, order = tmp_path / "start.lock", [], []

    def second():
        with data_dir_lock(lock, 5, said.append, poll_s=0.05, holder_kind="command"):
            order.append("second")

    with data_dir_lock(lock, 5, said.append, holder_kind="command"):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.3)
        order.append("first done")
    waiter.join(timeout=5)
    assert order == ["first done", "second"]
    assert said == [f"waiting for the command holding {lock} (pid {os.getpid()})"]


def test_an_unusable_command_line_ends_with_an_error_line_on_stdout(capsys):
    parser = ArgumentParser(prog="predict_flow.py")
    parser.add_argument("--batch-size", type=int)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--batch-size", "many"])
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and "usage:" in err
    assert out.strip().splitlines()[-1].startswith("error: argument --batch-size: invalid int value: 'many'")


@pytest.mark.parametrize(
    "command",
    [
        ["flows/cifar_flow.py", "--epochs", "zero"],
        ["flows/predict_flow.py"],
        ["flows/add_images.py", "--list", "--data-dir", "{tmp}/nothing-here"],
        ["flows/registry_flow.py", "promote"],
        ["flows/sweep_flow.py", "--workers", "-"],
    ],
    ids=["pipeline", "predict", "add_images", "registry", "sweep"],
)
def test_every_command_refusing_its_input_ends_with_an_error_line_and_no_traceback(command, tmp_path):
    command = [part.replace("{tmp}", str(tmp_path)) for part in command]
    result = subprocess.run(
        [sys.executable, *command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in result.stderr
