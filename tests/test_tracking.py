"""MLflow tracking (cifarflow/tracking.py), read back with MLflow's own client: a pipeline run, its cached rerun, a
monitor run and a sweep's trials each become an MLflow run; without MLflow nothing imports it; a broken store is
warned once and the run goes on; `mlflow server` over the store lists the runs in headless Chromium.

One pipeline run (tiny synthetic archive, `classic`, 1 epoch) and its cached rerun per module; the rest reuse them."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from prefect.client.orchestration import get_client

from cifarflow.config import PipelineConfig
from cifarflow.data.shards import read_split
from cifarflow.files import read_json
from cifarflow.layout import DataLayout
from cifarflow.monitoring.log import INSERT, connect, log_rows, micros, new_ids, transaction
from cifarflow.orchestration.stages import STAGES
from cifarflow.registry.store import read_champion_version
from tests.browser import launched_chromium, require_chromium
from tests.conftest import REPO_ROOT
from tests.flow_helpers import ALL_CACHED, ALL_COMPLETED, run_flow
from tests.live_server import free_port
from tests.registry_helpers import copy_data_dir
from tests.serving_helpers import wait_until
from tests.synthetic import write_archive

mlflow = pytest.importorskip("mlflow", reason="pip install -e '.[mlflow]' (in the dev extra)")

SCREENSHOT = Path("/tmp/mlflow-ui.png")  # for a person to look at


@pytest.fixture(autouse=True)
def tracking_on(monkeypatch):
    monkeypatch.setenv("CIFARFLOW_TRACKING", "on")  # tests/conftest.py turns it off for the rest of the suite
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def tracked(prefect_server, tmp_path_factory):
    """A data dir after a pipeline run and its cached rerun, both tracked; (config, the first's Prefect flow run,
    the second's)."""
    root = tmp_path_factory.mktemp("tracking")
    archive = write_archive(root / "source" / "cifar-10-python.tar.gz")
    config = PipelineConfig(source=str(archive), data_dir=root / "data", epochs=1, rows_per_shard=100)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CIFARFLOW_TRACKING", "on")
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        first, states = run_flow(config)
        assert states == ALL_COMPLETED
        again, states = run_flow(config)
        assert states == ALL_CACHED
    with get_client(sync_client=True) as client:
        return config, *(client.read_flow_run(state.state_details.flow_run_id) for state in (first, again))


def client_for(config: PipelineConfig):
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{config.layout.mlflow_db}")


def runs_of(client, experiment: str) -> list:
    """The experiment's runs, oldest first."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, [e.name for e in client.search_experiments()]
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def artifact_names(client, run) -> set[str]:
    return {artifact.path for artifact in client.list_artifacts(run.info.run_id)}


def test_a_pipeline_run_and_its_cached_rerun_are_mlflow_runs_with_params_metrics_artifacts_and_tags(tracked):
    config, first_flow_run, again_flow_run = tracked
    client = client_for(config)
    first, again = (run for run in runs_of(client, "CIFAR-10") if run.data.tags["kind"] == "pipeline")
    report = config.layout.latest_report.resolve()
    metrics = read_json(report / "metrics.json")
    history = read_json(next(config.layout.models.glob("*/history.json")))

    for run, flow_run in ((first, first_flow_run), (again, again_flow_run)):
        assert run.info.status == "FINISHED" and run.info.run_name == flow_run.name
        assert run.info.start_time == int(flow_run.start_time.timestamp() * 1000)
        params = run.data.params
        assert params["model"] == "classic" and params["epochs"] == "1" and params["seed"] == "42"
        assert params["source"] == config.source and params["data_dir"] == str(config.data_dir)
        assert params["batch_size"] == str(config.train_batch_size)  # the preset's, as used: not "None"
        assert params["learning_rate"] == str(config.train_learning_rate)
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        assert {"test_accuracy", "test_loss", "ece", "nll", "brier", "mean_corruption_accuracy"} <= numbers.keys()
        assert {k: run.data.metrics[k] for k in numbers} == pytest.approx(numbers)
        assert run.data.metrics["calibration.before.ece"] == pytest.approx(metrics["calibration"]["before"]["ece"])
        for name in ("loss", "accuracy"):
            logged = client.get_metric_history(run.info.run_id, name)
            assert [(m.step, m.value) for m in logged] == [(1, pytest.approx(history[0][name]))]  # one per epoch
        assert artifact_names(client, run) == {path.name for path in report.iterdir()}
        assert {"report.md", "model_card.json", "confusion_matrix.png", "reliability.png"} <= artifact_names(
            client, run
        )
        assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(config.layout.mlflow_artifacts)
        tags = run.data.tags
        assert tags["dataset_version"] == metrics["dataset_version"] and tags["preset"] == "classic"
        assert tags["registry_version"] == read_champion_version(config.layout.registry).name == "v1"
        assert tags["run_name"] == metrics["run_name"] and tags["prefect.flow_run_id"] == str(flow_run.id)
    assert "reused_stages" not in first.data.tags
    assert again.data.tags["reused_stages"].split(",") == sorted(STAGES)  # the rerun computed nothing


def test_a_monitor_run_is_an_mlflow_run_of_its_own_experiment(tracked, capsys):
    from flows.monitor_flow import main as monitor_main

    config, _, _ = tracked
    images = read_split(config.layout.shard_manifest, "train")[0][:120]  # at least MIN_WINDOW: a verdict
    scores, scored_at = np.full((len(images), 10), 0.1), micros(datetime.now(UTC) - timedelta(minutes=1))
    with transaction(connect(config.layout.prediction_log)) as db:
        db.executemany(INSERT, log_rows(new_ids(len(images)), "batch", "v1", scores, images, scored_at))
    assert monitor_main(["--data-dir", str(config.data_dir), "--since", "2000-01-01T00:00:00"]) == 0
    report = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("done: monitoring report at "))
    summary = read_json(report / "monitor.json")

    (run,) = runs_of(client_for(config), "CIFAR-10 monitoring")
    assert run.info.status == "FINISHED" and run.info.run_name == f"monitor-{report.name}"
    assert run.data.metrics["images"] == summary["images"] == 120
    assert run.data.metrics["drift"] == summary["drift"] is not None
    statistic = run.data.metrics["signals.prediction.statistic"]
    assert statistic == pytest.approx(summary["signals"]["prediction"]["statistic"])
    champion = read_champion_version(config.layout.registry)
    assert run.data.tags["registry_version"] == "v1" and run.data.tags["verdict"] == summary["verdict"]
    assert run.data.tags["dataset_version"] == champion.dataset_version
    assert run.data.params["window.rows"] == "120"
    assert artifact_names(client_for(config), run) == {path.name for path in report.iterdir()}


def test_each_sweep_trial_is_a_child_run_of_the_sweeps_run_failed_trials_failed(tracked):
    from flows.sweep_flow import cifar_sweep

    config, _, _ = tracked
    space = {"name": "tracked", "trials": [{"seed": 42}, {"learning_rate": 9.0, "batch_size": 64}]}
    summary = cifar_sweep(config=config, space=space, sequential=True)
    rows = {row["trial"]: row for row in summary["trials"]}

    client = client_for(config)
    sweep_runs = [run for run in runs_of(client, "CIFAR-10") if run.data.tags.get("sweep") == "tracked"]
    (parent,) = [run for run in sweep_runs if run.data.tags["kind"] == "sweep"]
    trials = {run.info.run_name: run for run in sweep_runs if run.data.tags["kind"] == "sweep trial"}
    assert parent.info.run_name == "sweep-tracked" and {"leaderboard.md", "leaderboard.json"} <= artifact_names(
        client, parent
    )
    assert set(trials) == set(rows) and len(trials) == 2
    for name, run in trials.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["status"] == rows[name]["status"]
    (cached,) = [run for name, run in trials.items() if rows[name]["status"] == "cached"]  # the pipeline's own model
    assert cached.info.status == "FINISHED" and cached.data.params["seed"] == "42"
    assert cached.data.metrics["test_accuracy"] == pytest.approx(rows[cached.info.run_name]["test_accuracy"])
    (failed,) = [run for name, run in trials.items() if rows[name]["status"] == "failed"]
    assert failed.info.status == "FAILED" and "TrainingDiverged" in failed.data.tags["error"]
    assert failed.data.params["learning_rate"] == "9.0" and not failed.data.metrics


def test_a_failed_pipeline_run_is_a_failed_mlflow_run_with_its_error_and_what_its_stages_made(tracked):
    config, _, _ = tracked
    diverging = config.model_copy(update={"learning_rate": 9.0, "batch_size": 64})
    state, states = run_flow(diverging)
    assert state.is_failed() and states["train"] == "Failed"
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(state.state_details.flow_run_id).name
    (run,) = [run for run in runs_of(client_for(config), "CIFAR-10") if run.info.run_name == name]
    assert run.info.status == "FAILED" and "TrainingDiverged" in run.data.tags["error"]
    assert run.data.params["learning_rate"] == "9.0" and run.data.tags["dataset_version"]  # validate ran
    assert "test_accuracy" not in run.data.metrics


def test_a_broken_tracking_store_is_warned_once_and_the_run_goes_on(tracked, monkeypatch, caplog, tmp_path):
    config, _, _ = tracked
    (tmp_path / "a-file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"  # its folder is a file: nothing can be written there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with caplog.at_level(logging.WARNING, logger="cifarflow.tracking"):
        state, states = run_flow(config)
    assert state.is_completed() and states == ALL_CACHED
    warnings = [record for record in caplog.records if record.name == "cifarflow.tracking"]
    assert len(warnings) == 1 and uri in warnings[0].getMessage()
    assert "CIFARFLOW_TRACKING=off" in warnings[0].getMessage()


@pytest.mark.parametrize("value", ["off", " OFF ", "0", "false", "no"])
def test_tracking_turned_off_opens_no_store(value, monkeypatch, tmp_path):
    from cifarflow.tracking import _track

    monkeypatch.setenv("CIFARFLOW_TRACKING", value)
    recorded = []
    _track(DataLayout(tmp_path), "", lambda client, experiment: recorded.append(experiment))
    assert recorded == [] and list(tmp_path.iterdir()) == []


def test_a_data_dir_whose_path_a_sqlite_url_cannot_name_is_warned_and_nothing_written_outside(caplog, tmp_path):
    from cifarflow.tracking import _track

    data_dir = tmp_path / "runs?nightly"  # '?' would start the URL's query: the store would land beside the dir
    data_dir.mkdir()
    with caplog.at_level(logging.WARNING, logger="cifarflow.tracking"):
        _track(DataLayout(data_dir), "", lambda client, experiment: None)
    assert "has a '?' in its path" in caplog.text and list(tmp_path.iterdir()) == [data_dir]


def test_without_mlflow_the_pipeline_runs_and_nothing_imports_it(tracked, cli_env, tmp_path):
    """A fresh process in which `import mlflow` fails, as when the extra is not installed."""
    config, _, _ = tracked
    data = copy_data_dir(config.data_dir, tmp_path / "data")
    blocker = tmp_path / "no-mlflow"
    blocker.mkdir()
    seen = tmp_path / "seen.json"
    (blocker / "sitecustomize.py").write_text(
        f"""import atexit, json, sys
asked = []
class NoMlflow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mlflow":
            asked.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, NoMlflow())
atexit.register(lambda: open({str(seen)!r}, "w").write(json.dumps(
    {{"asked": asked, "loaded": sorted(m for m in sys.modules if m.split(".")[0] == "mlflow")}})))
"""
    )
    env = cli_env | {"PYTHONPATH": f"{blocker}:{REPO_ROOT}", "CIFARFLOW_TRACKING": "on"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "flows/cifar_flow.py", "--source", config.source, "--data-dir", str(data)]
    command += ["--epochs", "1", "--rows-per-shard", "100"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("done: report at ")
    found = json.loads(seen.read_text())
    assert found["asked"] == ["mlflow"]  # the tracking hook ran and asked once
    assert found["loaded"] == []
    assert "MLflow tracking" not in done.stderr  # no warning: a missing extra is not a failure


@pytest.mark.server  # a real `mlflow server` subprocess
def test_mlflow_server_lists_both_runs_in_a_browser(tracked, tmp_path):
    require_chromium()
    import playwright.sync_api as playwright

    config, _, _ = tracked
    first, again = [run for run in runs_of(client_for(config), "CIFAR-10") if run.data.tags["kind"] == "pipeline"][:2]
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{config.layout.mlflow_db}"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _healthy(f"http://127.0.0.1:{port}/health", server), 120, 0.5, "mlflow server health")
        shot = tmp_path / "mlflow-ui.png"
        with launched_chromium() as browser:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/#/experiments/{first.info.experiment_id}/runs", timeout=60_000)
            for run in (first, again):
                playwright.expect(page.get_by_text(run.info.run_name, exact=True)).to_be_visible(timeout=60_000)
            page.screenshot(path=shot)
        shutil.copy(shot, SCREENSHOT)
        print(f"MLflow UI screenshot: {shot} (copied to {SCREENSHOT})")
    finally:
        server.terminate()
        server.wait(30)


def _healthy(url: str, server: subprocess.Popen) -> bool:
    import urllib.request

    if server.poll() is not None:
        raise RuntimeError(f"mlflow server exited with {server.returncode}")
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
