"""The command line as a user runs it: bad input exits non-zero before any work; faults lose
nothing; a killed training resumes; a flaky download is retried; runs on one data dir queue.

The argument checks call `main([...])` in this process (the unit tier: no Prefect server, no start-up
of a fresh interpreter); the rest run `flows/cifar_flow.py` as a subprocess, as a user does (the flow
tier: each uses the session's Prefect server through `cli_env`), and so does one argument check, to
prove the real command ends the same way.
"""

from __future__ import annotations

import hashlib
import http.server
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel, Field

from cifarflow.cli import EXIT_DONE, EXIT_FAILED, EXIT_USAGE, ArgumentParser, done, print_problems, run_cli
from cifarflow.errors import PipelineInputError
from flows.cifar_flow import main as pipeline_command  # imported before a test captures output: Prefect's
from flows.sweep_flow import main as sweep_command  # log handlers bind to the stderr of the moment they load
from tests.conftest import REPO_ROOT
from tests.synthetic import archive_members, batch_bytes, write_archive

FLOW = str(REPO_ROOT / "flows" / "cifar_flow.py")


def last_line(output: str) -> str:
    """What a command's outcome is read from: its last line on stdout (`done: …` or `error: …`)."""
    lines = output.strip().splitlines()
    return lines[-1] if lines else ""


def cli(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, FLOW, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT
    )


def pipeline(capsys, *args) -> tuple[int, str, str]:
    """`flows/cifar_flow.py ARGS` in this process: exit code, stdout, stderr."""
    code = pipeline_command([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "--epochs: Input should be greater than 0"),
        (["--batch-size", "-4"], "--batch-size: Input should be greater than 0"),
        (["--model", "resnet9000"], "unknown model 'resnet9000'"),
        (["--stages", "train,deploy"], "unknown stage(s) in --stages: deploy"),
        (["--sha256", "nothex"], "64 hex characters"),
    ],
)
def test_invalid_options_exit_2_before_any_work(synthetic_archive, tmp_path, capsys, args, message):
    data_dir = tmp_path / "data"
    code, out, err = pipeline(capsys, "--source", synthetic_archive, "--data-dir", data_dir, *args)
    assert code == 2, err
    assert last_line(out).startswith("error: ") and message in last_line(out)
    assert not data_dir.exists()  # nothing was started


def test_missing_source_says_how_to_get_one(tmp_path, capsys):
    code, out, _ = pipeline(capsys, "--source", tmp_path / "absent.tar.gz", "--data-dir", tmp_path / "data")
    error = last_line(out)
    assert code == 2 and "is not an existing file" in error and "docs/how-to/get-data.md" in error
    assert (REPO_ROOT / "docs/how-to/get-data.md").is_file()  # the page the error points at exists


def test_unwritable_data_dir_is_rejected(synthetic_archive, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, out, _ = pipeline(capsys, "--source", synthetic_archive, "--data-dir", blocker / "data")
    error = last_line(out)
    assert code == 2 and "cannot write under" in error and "another --data-dir" in error


def test_a_data_dir_holds_one_data_set(synthetic_archive, tmp_path, capsys):
    """Another class set or another image size than the data dir's shards: refused before any work (exit 2), the
    data dir untouched; the same data set again is not refused."""
    from cifarflow.config import PipelineConfig
    from cifarflow.data.ingest import ingest_source

    data_dir = tmp_path / "data"
    ingest_source(PipelineConfig(source=str(synthetic_archive), data_dir=data_dir, rows_per_shard=100))
    manifest = (data_dir / "parquet" / "manifest.json").read_bytes()
    photos = tmp_path / "photos"
    for shade, name in enumerate(("kettle", "lantern", "anvil")):
        (photos / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), (shade * 80, 90, 30)).save(photos / name / "a.png")
    held = f"error: {data_dir} holds 10 classes (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck)"
    for source, extra, has, hint in [
        (photos, [], f"at 32×32; {photos} has 3 classes (anvil, kettle, lantern) at 32×32;", ""),
        (synthetic_archive, ["--image-size", "64"], f"at 32×32; {synthetic_archive} has 10 classes (airplane,", "32"),
    ]:
        code, out, _ = pipeline(capsys, "--source", source, "--data-dir", data_dir, "--plan", *extra)
        error = last_line(out)
        assert code == 2 and error.startswith(held) and has in error, out
        assert error.endswith(f"use another --data-dir (or pass --image-size {hint})" if hint else "--data-dir")
    assert "truck) at 64×64; a data dir holds one data set" in error  # the size asked for is named
    assert (data_dir / "parquet" / "manifest.json").read_bytes() == manifest
    code, out, _ = pipeline(capsys, "--source", synthetic_archive, "--data-dir", data_dir, "--plan")
    assert code == 0 and last_line(out).startswith("done: "), out


@pytest.mark.flow  # a fresh process of the product: not the unit tier
def test_the_real_command_refuses_an_invalid_option_the_same_way(synthetic_archive, tmp_path):
    data_dir = tmp_path / "data"
    result = cli("--source", synthetic_archive, "--data-dir", data_dir, "--epochs", "0")
    assert result.returncode == 2, result.stderr
    assert last_line(result.stdout) == "error: invalid options: --epochs: Input should be greater than 0"
    assert "Traceback" not in result.stderr and not data_dir.exists()


def test_the_sweep_names_an_invalid_option_as_the_pipeline_does(synthetic_archive, tmp_path, capsys):
    data_dir = tmp_path / "data"
    code = sweep_command(["--source", str(synthetic_archive), "--data-dir", str(data_dir), "--rows-per-shard", "0"])
    out = capsys.readouterr().out
    assert code == 2 and last_line(out) == "error: invalid options: --rows-per-shard: Input should be greater than 0"
    assert not data_dir.exists()


# ------------------------------------ the scaffold every command uses -------------------------


class Options(BaseModel):
    batch_size: int = Field(gt=0)


def scaffold(capsys, argv: list[str], run) -> tuple[int, str, str]:
    """run_cli on a parser of one option, `--batch-size`, checked into `Options`: code, stdout, stderr."""
    parser = ArgumentParser(prog="demo")
    parser.add_argument("--batch-size", type=int, default=1)
    code = run_cli(parser, lambda args: Options(batch_size=args.batch_size), run, argv, what="the demo")
    out, err = capsys.readouterr()
    return code, last_line(out), err


def raising(error: Exception):
    def run(args, options):
        raise error

    return run


def test_the_scaffold_ends_every_command_by_one_exit_code_table(capsys):
    """0 done; 2 for arguments refused before any work (argparse, the typed config, a check); 1 for
    anything found once the work started, a bad input included; 130 for Ctrl-C."""
    ran = lambda args, options: done(f"ran with {options.batch_size}")  # noqa: E731
    assert scaffold(capsys, ["--batch-size", "3"], ran)[:2] == (EXIT_DONE, "done: ran with 3")
    code, last, _ = scaffold(capsys, ["--batch-size", "0"], ran)
    assert (code, last) == (EXIT_USAGE, "error: invalid options: --batch-size: Input should be greater than 0")
    with pytest.raises(SystemExit) as refused:  # argparse's own refusal: the same code and last line
        scaffold(capsys, ["--batch-size", "many"], ran)
    assert refused.value.code == EXIT_USAGE

    def refuse(args):
        raise PipelineInputError("no such folder: x")

    parser = ArgumentParser(prog="demo")
    assert run_cli(parser, refuse, ran, [], what="the demo") == EXIT_USAGE
    assert last_line(capsys.readouterr().out) == "error: no such folder: x"

    code, last, err = scaffold(capsys, [], raising(PipelineInputError("the archive is truncated")))
    assert (code, last) == (EXIT_FAILED, "error: the archive is truncated") and "Traceback" not in err
    code, last, err = scaffold(capsys, [], raising(RuntimeError("disk on fire")))
    assert (code, last) == (EXIT_FAILED, "error: the demo failed: RuntimeError: disk on fire")
    assert "Traceback" in err  # not from a flow run, whose engine logs it: kept for a bug report
    code, last, _ = scaffold(capsys, [], raising(KeyboardInterrupt()))
    assert (code, last) == (
        130,
        "error: interrupted; nothing half-written was left behind (outputs are written atomically)",
    )


def _bad_source(fault: str, good: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    members = archive_members(per_batch=60, test_size=100)
    if fault == "truncated":
        (bad := tmp_path / "cut.tar.gz").write_bytes(good.read_bytes()[:3000])
        return bad, []
    if fault == "not_gzip":
        (bad := tmp_path / "page.tar.gz").write_bytes(b"<html>404 not found</html>")
        return bad, []
    if fault == "checksum":
        return good, ["--sha256", "0" * 64]
    if fault == "missing_batch":
        del members["data_batch_3"]
    elif fault == "wrong_shape":
        members["data_batch_2"] = batch_bytes("b", np.zeros(4, int), np.zeros((4, 1000), np.uint8), ["x"] * 4)
    elif fault == "labels_out_of_range":
        labels = np.array([0, 1, 2, 12])
        members["test_batch"] = batch_bytes("t", labels, np.zeros((4, 3072), np.uint8), ["x"] * 4)
    return write_archive(tmp_path / f"{fault}.tar.gz", members), []


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("truncated", "may be truncated"),
        ("not_gzip", "is not a readable tar.gz archive"),
        ("checksum", "sha256 is"),
        ("missing_batch", "is missing cifar-10-batches-py/data_batch_3"),
        ("wrong_shape", "data_batch_2: data has shape (4, 1000) uint8, expected (N, 3072) uint8"),
        ("labels_out_of_range", "test_batch: labels span 0..12, expected 0..9"),
    ],
)
def test_bad_archive_fails_clearly_and_loses_nothing(synthetic_archive, tmp_path, cli_env, fault, message):
    from cifarflow.config import PipelineConfig
    from cifarflow.data.ingest import ingest_source

    data_dir = tmp_path / "data"
    ingest_source(PipelineConfig(source=str(synthetic_archive), data_dir=data_dir, rows_per_shard=100))  # good shards
    before = {p: p.read_bytes() for p in (data_dir / "parquet").rglob("*") if p.is_file()}
    source, extra = _bad_source(fault, synthetic_archive, tmp_path)
    result = cli("--source", source, "--data-dir", data_dir, "--rows-per-shard", "100", *extra, env=cli_env)
    assert result.returncode == 1
    assert last_line(result.stdout).startswith("error: ") and message in last_line(result.stdout)
    assert {p: p.read_bytes() for p in (data_dir / "parquet").rglob("*") if p.is_file()} == before
    assert not [p for p in data_dir.rglob("*.part")]
    assert "Retry 1/3" not in result.stdout + result.stderr  # bad input is not retried


def test_plan_explains_without_running(synthetic_archive, tmp_path, cli_env):
    base = ["--source", synthetic_archive, "--data-dir", tmp_path / "data", "--rows-per-shard", "100"]
    fresh = cli(*base, "--plan", env=cli_env)
    assert fresh.returncode == 0 and "ingest: will run: never ran in this data directory" in fresh.stdout
    assert not (tmp_path / "data" / "parquet").exists()
    assert cli(*base, "--epochs", "1", "--stages", "ingest,validate,preprocess,train", env=cli_env).returncode == 0
    plan = cli(*base, "--epochs", "2", "--plan", env=cli_env).stdout
    assert "ingest: cached: source sha256" in plan and "preprocess: cached" in plan
    assert "train: will run: train_epochs 1→2" in plan
    assert "evaluate: will run: after train runs" in plan
    assert (
        "train: will run: --refresh asked for it"
        in cli(*base, "--epochs", "1", "--plan", "--refresh", "train", env=cli_env).stdout
    )


def _wait_for(predicate, timeout, what, poll_s=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def _journal_epochs(data_dir: Path) -> int:
    journals = list((data_dir / "models").glob(".*.inprogress/epochs.jsonl"))
    return len(journals[0].read_text().splitlines()) if journals else 0


def test_killed_training_resumes_from_last_epoch(synthetic_archive, tmp_path, cli_env):
    """SIGKILL as soon as the first epoch's checkpoint is in place (polled every 10 ms, far shorter than
    the 11 epochs left, however fast the machine), then the same command resumes and finishes."""
    data_dir, epochs = tmp_path / "data", 12
    args = [FLOW, "--source", synthetic_archive, "--data-dir", data_dir, "--epochs", epochs, "--rows-per-shard", 100]
    victim = subprocess.Popen(
        [sys.executable, *map(str, args)],
        env=cli_env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        checkpoints = lambda: list((data_dir / "models").glob(".*.inprogress/backup/checkpoint.json"))  # noqa: E731
        _wait_for(lambda: bool(checkpoints()), 300, "a checkpointed epoch", poll_s=0.01)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    finally:
        victim.kill()
    done_before_kill = _journal_epochs(data_dir)
    assert 1 <= done_before_kill < epochs
    resumed = cli(*args[1:], env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    output = resumed.stdout + resumed.stderr
    assert f"epoch 1/{epochs}:" not in output  # did not start over (the train task's line per epoch) ...
    assert f"epoch {epochs}/{epochs}:" in output  # ... and finished the planned number of epochs
    from cifarflow.files import read_json

    history = read_json(next((data_dir / "models").glob("*/history.json")))
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
    assert not list((data_dir / "models").glob(".*.inprogress"))


class FlakyArchiveServer(http.server.ThreadingHTTPServer):
    """Serves one file over HTTP on 127.0.0.1, dropping the first `failures` connections."""

    def __init__(self, payload: bytes, failures: int):
        self.payload, self.failures, self.requests = payload, failures, 0
        super().__init__(("127.0.0.1", 0), self._Handler)

    class _Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            server = self.server
            server.requests += 1
            if server.requests <= server.failures:
                self.send_error(503, "try again later")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(server.payload)))
            self.end_headers()
            self.wfile.write(server.payload)

        def log_message(self, *args):
            pass


def test_flaky_download_is_retried_with_backoff(synthetic_archive, tmp_path, cli_env):
    payload = synthetic_archive.read_bytes()
    server = FlakyArchiveServer(payload, failures=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
        result = cli(
            "--source",
            url,
            "--sha256",
            hashlib.sha256(payload).hexdigest(),
            "--data-dir",
            tmp_path / "data",
            "--epochs",
            "1",
            "--rows-per-shard",
            "100",
            env=cli_env,
        )
    finally:
        server.shutdown()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert server.requests == 3
    assert "Retry 1/3" in output and "Retry 2/3" in output and "Retry 3/3" not in output
    assert (tmp_path / "data" / "raw" / "cifar-10-python.tar.gz").read_bytes() == payload


def test_second_run_on_same_data_dir_waits_or_fails_clearly(synthetic_archive, tmp_path, cli_env):
    """The test holds the data directory's lock itself, as a running pipeline would: a run that may
    not wait fails clearly (exit 1) and writes nothing; a run that may wait starts once it is free (its first
    stage only: the lock is taken before any stage, so one shows it as well as nine)."""
    from cifarflow.files import read_json
    from cifarflow.lock import data_dir_lock

    data_dir = tmp_path / "data"
    args = ["--source", synthetic_archive, "--data-dir", data_dir, "--rows-per-shard", "100", "--epochs", "1"]
    with data_dir_lock(data_dir / ".pipeline.lock", timeout_s=0):
        refused = cli(*args, "--lock-timeout", "1", env=cli_env)
        assert refused.returncode == 1
        assert "is in use by another pipeline run" in last_line(refused.stdout)
        assert not (data_dir / "parquet").exists()  # it did no work
        log = tmp_path / "waiting.log"
        with open(log, "w") as out:
            waiting = subprocess.Popen(
                [sys.executable, FLOW, *map(str, args), "--lock-timeout", "300", "--stages", "ingest"],
                env=cli_env,
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for(lambda: "waiting for the pipeline run holding" in log.read_text(), 120, "the run to wait")
            assert waiting.poll() is None and not (data_dir / "parquet").exists()
        except BaseException:
            waiting.kill()
            raise
    try:
        waiting.wait(timeout=300)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, log.read_text()
    assert read_json(data_dir / "parquet" / "manifest.json")["splits"]["train"]["rows"] > 0


# ------------------------------------ run names ----------------------------------------------


def flow_run_name(flow, parameters: dict, monkeypatch) -> str:
    """The name Prefect gives a run of `flow` called with `parameters` (its own resolution, the run's
    parameters as `prefect.runtime.flow_run` reads them inside the run)."""
    from prefect._internal.engine import resolve_custom_flow_run_name
    from prefect.runtime import flow_run

    monkeypatch.setitem(flow_run.FIELDS, "parameters", lambda: parameters)
    return resolve_custom_flow_run_name(flow, parameters)


def every_flow():
    import importlib

    from prefect import Flow

    for path in sorted((REPO_ROOT / "flows").glob("*.py")):
        module = importlib.import_module(f"flows.{path.stem}")
        yield from (value for value in vars(module).values() if isinstance(value, Flow))


@pytest.mark.parametrize(
    ("module", "flow", "parameters", "expected"),
    [
        ("flows.monitor_flow", "monitor", {"data_dir": "/tmp/pytest-7/run/data"}, "monitor-data"),
        ("flows.feedback_flow", "export_feedback", {"data_dir": "/srv/cifar"}, "feedback-cifar"),
        ("flows.feedback_flow", "export_feedback", {}, "feedback-data"),
        ("flows.predict_flow", "predict", {"paths": ["/srv/x"], "model": "/srv/models/best.keras"}, "predict-best"),
        ("flows.predict_flow", "predict", {"paths": ["/srv/x"], "model": "v2"}, "predict-v2"),
        ("flows.predict_flow", "predict", {"paths": ["/srv/x"]}, "predict-champion"),
        ("flows.add_images", "add_images", {"inbox": "/home/me/incoming", "data_dir": "/srv/data"}, "add-incoming"),
    ],
)
def test_run_names_are_short_not_absolute_paths(module, flow, parameters, expected, monkeypatch):
    import importlib

    assert flow_run_name(getattr(importlib.import_module(module), flow), parameters, monkeypatch) == expected


def test_no_flow_names_its_runs_by_an_absolute_path(monkeypatch):
    """Every flow in flows/, given an absolute path in each path-like parameter, names its runs without it."""
    import inspect

    flows = list(every_flow())
    assert len({f.name for f in flows}) >= 8  # the pipeline, sweep (and its trials), add, withdraw, predict, ...
    for flow in flows:
        if flow.flow_run_name is None:
            continue  # Prefect's own adjective-animal name
        signature = inspect.signature(flow.fn).parameters.values()
        paths = [p.name for p in signature if p.annotation in ("Path", "str", "Path | None", "str | None")]
        parameters = dict.fromkeys(paths, "/tmp/pytest-7/deep/where")
        name = flow_run_name(flow, parameters, monkeypatch)
        assert "/" not in name and "pytest-7" not in name, (flow.name, name)


def test_problems_are_printed_one_a_line_then_counted(capsys):
    print_problems("25 files rejected", [(f"f{i}.png", "does not decode") for i in range(25)], "/r/summary.json")
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["25 files rejected:", "  f0.png: does not decode"] and len(lines) == 22
    assert lines[-1] == "  … and 5 more: see /r/summary.json"
    print_problems("0 files rejected", [], "/r/summary.json")
    assert capsys.readouterr().out == ""  # nothing rejected: no heading either


def test_what_the_documented_commands_make_in_the_repo_root_is_ignored():
    """Each file or folder a command of the README or the docs writes into the repository root (`> review-tokens`,
    `--out scored.parquet` and its contact sheet, `--out bench_models.md`, `--out incoming`) is git-ignored: a
    token file must never be committed by `git add .`, nor a user's scores or reports."""
    import re

    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
    readme = "\n".join(page.read_text() for page in pages)
    made = set(re.findall(r"(?:(?<!\S)> |--out |--review-token-file )([A-Za-z][\w.-]*)(?=[\s\"`\]])", readme))
    made |= {name.removesuffix(".parquet") + ".png" for name in made if name.endswith(".parquet")}
    assert {"review-tokens", "scored.parquet", "bench_models.md", "incoming"} <= made, made
    for name in sorted(made):
        as_file_or_folder = (name, f"{name}/file")  # a folder's pattern (`incoming/`) matches what is in it
        ignored = [
            subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT).returncode for path in as_file_or_folder
        ]
        assert 0 in ignored, f"{name}: made in the repository root by a documented command, not git-ignored"
