"""deployments/prefect.yaml against a real local Prefect server: `prefect deploy` creates the nightly
deployment with the declared schedule, parameters and concurrency limit; a run triggered through the API
is executed by a `process` worker, and writes its report; its promotion emits `cifar10.model.promoted`, which
triggers the monitor, and a rerun that keeps the champion emits nothing."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml

from cifarflow.orchestration.events import EVENTS
from tests.live_server import PREFECT, REPO_ROOT, live_prefect_server
from tests.test_triggers import stored_events, wait_for_runs

PREFECT_YAML = REPO_ROOT / "deployments" / "prefect.yaml"
DEPLOYMENTS = {d["entrypoint"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}
SPEC = DEPLOYMENTS["flows/cifar_flow.py:cifar_pipeline"]
SCORE = DEPLOYMENTS["flows/predict_flow.py:predict"]
MONITOR = DEPLOYMENTS["flows/monitor_flow.py:monitor"]
FEEDBACK = DEPLOYMENTS["flows/feedback_flow.py:export_feedback"]
POOL = SPEC["work_pool"]["name"]

pytestmark = pytest.mark.server


# ------------------------------------ without a server --------------------------------------


def test_prefect_yaml_declares_a_nightly_offline_deployment():
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    (pull,) = spec["pull"]
    assert pull == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ repo-root.stdout }}"}}
    assert not any("git" in str(step) for step in spec.get("pull", []) + spec.get("build", []))
    assert SPEC["entrypoint"] == "flows/cifar_flow.py:cifar_pipeline"
    assert SPEC["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": True}]
    assert SPEC["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert (REPO_ROOT / SPEC["entrypoint"].split(":")[0]).is_file()
    from cifarflow.config import PipelineConfig

    assert set(SPEC["parameters"]["config"]) <= set(PipelineConfig.model_fields)


def test_prefect_yaml_scores_a_folder_on_a_schedule():
    import inspect

    from flows.predict_flow import predict

    assert SCORE["entrypoint"] == "flows/predict_flow.py:predict"
    assert SCORE["schedules"] == [{"cron": "0 3 * * *", "timezone": "UTC", "active": True}]
    assert set(SCORE["parameters"]) <= set(inspect.signature(predict.fn).parameters)
    assert SCORE["work_pool"]["name"] == POOL


def test_prefect_yaml_monitors_hourly():
    import inspect

    from flows.monitor_flow import monitor

    assert MONITOR["entrypoint"] == "flows/monitor_flow.py:monitor"
    assert MONITOR["schedules"] == [{"cron": "15 * * * *", "timezone": "UTC", "active": True}]
    assert set(MONITOR["parameters"]) <= set(inspect.signature(monitor.fn).parameters)
    assert MONITOR["work_pool"]["name"] == POOL
    (trigger,) = MONITOR["triggers"]  # and on every move of the champion, on the data dir it moved in
    assert trigger["type"] == "event" and trigger["expect"] == ["cifar10.model.promoted"]
    assert trigger["match"] == {"prefect.resource.id": "cifar10.model.*"}
    assert trigger["parameters"] == {"data_dir": "{{ event.payload.data_dir }}"}


def test_prefect_yaml_exports_feedback_before_the_nightly_retrain():
    import inspect

    from flows.feedback_flow import export_feedback

    assert FEEDBACK["name"] == "nightly-export" and export_feedback.name == "feedback"  # feedback/nightly-export
    assert FEEDBACK["schedules"] == [{"cron": "30 1 * * *", "timezone": "UTC", "active": True}]
    assert FEEDBACK["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert set(FEEDBACK["parameters"]) <= set(inspect.signature(export_feedback.fn).parameters)
    assert FEEDBACK["work_pool"]["name"] == POOL


def test_every_deployment_and_automation_has_a_name_of_its_own():
    """`prefect deployment ls` and the UI's automations list tell them apart: no two deployments share a
    name (Prefect names them by flow and name, but a list by name alone showed `nightly` twice) and the
    event triggers' automations are named (Prefect's default would be `nightly-retrain__automation_1`)."""
    names = [d["name"] for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]]
    assert len(names) == len(set(names)) == 4, names
    assert SPEC["name"] == "nightly-retrain" and FEEDBACK["name"] == "nightly-export"
    assert [t["name"] for t in SPEC["triggers"]] == ["retrain-when-the-data-grows"]
    assert [t["name"] for t in MONITOR["triggers"]] == ["monitor-the-new-champion"]


def test_every_deployment_takes_the_default_source_of_its_data_dir(tmp_path, synthetic_archive):
    """No deployment names a source: the nightly run, the data-triggered retrain and the team's runs (and
    sweeps) all get the flow's default for their data dir, the local archive when it is there."""
    from cifarflow.config import PipelineConfig

    team = yaml.safe_load((REPO_ROOT / "deployments" / "team" / "prefect.yaml").read_text())["deployments"]
    configs = {
        "nightly": SPEC["parameters"]["config"],
        "trigger": SPEC["triggers"][0]["parameters"]["config"],
    } | {d["name"]: d["parameters"]["config"] for d in team}
    local = tmp_path / "data" / "cache" / "cifar-10-python.tar.gz"
    local.parent.mkdir(parents=True)
    shutil.copy(synthetic_archive, local)
    for name, config in configs.items():
        assert "source" not in config, f"{name} names its own source: one rule decides it"
        assert PipelineConfig(**(config | {"data_dir": str(tmp_path / "data")})).source == str(local), name


# ------------------------------------ against a server --------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_prefect_server(tmp_path_factory.mktemp("deploy-server")) as live:
        yield live


def run_parameters(archive: Path, data_dir: Path) -> dict:
    return {"config": {"source": str(archive), "data_dir": str(data_dir), "epochs": 1, "rows_per_shard": 100}}


def read_deployment(server, name: str):
    from prefect.client.orchestration import get_client

    with server.client_settings(), get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def trigger(server, deployment_id, parameters: dict):
    from prefect.client.orchestration import get_client

    with server.client_settings(), get_client(sync_client=True) as client:
        return client.create_flow_run_from_deployment(deployment_id, parameters=parameters)


def wait_final(server, flow_run_id, timeout: float = 150):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with server.client_settings(), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state.is_final() or time.monotonic() > deadline:
                return run
            time.sleep(1)


def assert_report(data_dir: Path) -> None:
    report = (data_dir / "reports" / "latest" / "report.md").read_text()
    assert "# CIFAR-10 run" in report and "## Champion vs challenger" in report
    from cifarflow.registry.store import read_champion_version

    assert read_champion_version(data_dir / "registry").model_path.is_file()


def test_deploy_then_worker_runs_the_nightly_deployment(server, synthetic_archive, tmp_path):
    created = server.run(PREFECT, "work-pool", "create", POOL, "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = server.run(PREFECT, "deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    deployment = read_deployment(server, "cifar10-pipeline/nightly-retrain")
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC" and schedule.active
    assert deployment.parameters == SPEC["parameters"]
    # Prefect 3.8.8 keeps a deployment's limit as a global concurrency limit; `concurrency_limit` reads None
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert deployment.work_pool_name == POOL and set(deployment.tags) == {"cifar10", "nightly"}
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}]
    feedback = read_deployment(server, "feedback/nightly-export")
    from prefect.client.orchestration import get_client

    with server.client_settings(), get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name("retrain-when-the-data-grows")  # not `…__automation_1`
    assert automation.actions[0].deployment_id == deployment.id
    assert feedback.schedules[0].schedule.cron == "30 1 * * *" and feedback.parameters == FEEDBACK["parameters"]
    names = ("cifar10-pipeline/nightly-retrain", "predict/score-folder", "monitor/hourly", "feedback/nightly-export")
    for name in names:
        without_scheduled_runs(server, read_deployment(server, name))  # the worker's one run: the triggered one

    data_dir = tmp_path / "data"
    flow_run = trigger(server, deployment.id, run_parameters(synthetic_archive, data_dir))
    worker = server.run(PREFECT, "worker", "start", "--pool", POOL, "--run-once", timeout=240)
    run = wait_final(server, flow_run.id, timeout=30)
    assert run.state.is_completed(), f"{run.state!r}\n{worker.stdout[-4000:]}\n{worker.stderr[-4000:]}"
    assert_report(data_dir)
    assert_promotion_announced(server, data_dir)

    # the batch-prediction deployment scores a folder with the champion that run registered
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    folder = tmp_path / "to-score"
    folder.mkdir()
    for number in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * number, np.uint8)).save(folder / f"image-{number}.png")
    scoring = read_deployment(server, "predict/score-folder")
    flow_run = trigger(server, scoring.id, {"paths": [str(folder)], "data_dir": str(data_dir)})
    worker = server.run(PREFECT, "worker", "start", "--pool", POOL, "--run-once", timeout=240)
    run = wait_final(server, flow_run.id, timeout=30)
    assert run.state.is_completed(), f"{run.state!r}\n{worker.stdout[-4000:]}\n{worker.stderr[-4000:]}"
    (predictions,) = (data_dir / "predictions").glob("*/predictions.parquet")
    table = pq.read_table(predictions).to_pylist()
    assert sorted(Path(row["path"]).name for row in table) == [f"image-{n}.png" for n in range(3)]
    assert {row["model_version"] for row in table} == {"v1"} and all(row["error"] is None for row in table)

    # the monitor deployment finds the drift in what the champion was asked, and the event reaches the server
    assert_drift_event(server, data_dir, scored_ids={row["prediction_id"] for row in table})

    # a rerun that keeps the champion (the challenger is the champion already) moves nothing and announces nothing
    kept = server.run(sys.executable, "flows/cifar_flow.py", *cli_arguments(synthetic_archive, data_dir), timeout=240)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "kept champion: the challenger is the champion already" in kept.stderr, kept.stderr[-3000:]
    time.sleep(5)  # the server stores events in batches
    assert len(stored_events(server, data_dir, name="cifar10.model.promoted")) == 1


def cli_arguments(archive: Path, data_dir: Path) -> list[str]:
    """`run_parameters` as flows/cifar_flow.py's options, recomputing only the promote stage."""
    config = run_parameters(archive, data_dir)["config"]
    return [f"--{name.replace('_', '-')}={value}" for name, value in config.items()] + ["--refresh", "promote"]


def assert_promotion_announced(server, data_dir: Path) -> None:
    """The run made v1 the first champion: one `cifar10.model.promoted` (from none, by the promotion, with the
    decision as its reason) reached the server, and the monitor deployment's automation created a run on the data
    dir; that run is deleted (no worker is to run it)."""
    from prefect.client.orchestration import get_client

    from cifarflow.registry.store import alias_moves, read_version

    registry = data_dir / "registry"
    (move,) = alias_moves(registry)
    (event,) = stored_events(server, data_dir, at_least=1, name="cifar10.model.promoted")
    assert event.payload == {
        "data_dir": str(data_dir.resolve()),
        "from_version": None,
        "to_version": "v1",
        "from_accuracy": None,
        "to_accuracy": read_version(registry, "v1").accuracy,
        "model_id": read_version(registry, "v1").model_id,
        "by": "promotion",
        "reason": move["reason"],
        "at": move["at"],
    }
    assert event.payload.keys() == EVENTS["cifar10.model.promoted"].payload.keys()  # the reference page's keys
    assert move["reason"].startswith("promoted: first champion"), move
    (run,) = wait_for_runs(server, read_deployment(server, "monitor/hourly").id, data_dir)
    assert run.parameters == {"data_dir": str(data_dir.resolve())}
    with server.client_settings(), get_client(sync_client=True) as client:
        client.delete_flow_run(run.id)


def without_scheduled_runs(server, deployment) -> None:
    """Turn the deployment's schedules off and delete the runs they made, so that a worker's one run is
    the one the test triggers (its concurrency limit of 1 would cancel that one otherwise)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with server.client_settings(), get_client(sync_client=True) as client:
        for schedule in deployment.schedules:
            client.update_deployment_schedule(deployment.id, schedule.id, active=False)
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
        for run in runs:
            client.delete_flow_run(run.id)


def assert_drift_event(server, data_dir: Path, scored_ids: set[str]) -> None:
    """Darkened test images join the scored folder in the prediction log; the `monitor/hourly` deployment,
    run by a worker, reports drift and emits `cifar10.monitor.drift`, which the server then holds."""
    import json

    import numpy as np
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    from cifarflow.data.shards import read_split
    from cifarflow.layout import DataLayout
    from cifarflow.monitoring.log import PredictionLog, new_ids, read_window

    layout = DataLayout(data_dir)
    logged_ids = {row.prediction_id for row in read_window(layout.prediction_log)}
    assert logged_ids == scored_ids  # the batch flow logged what it scored
    images, _ = read_split(layout.shard_manifest, "test")
    dark = (images // 2).astype(np.uint8)  # the synthetic test split: 100 images
    with PredictionLog(layout.prediction_log) as log:
        log.append(new_ids(len(dark)), "service", "v1", np.full((len(dark), 10), 0.1, np.float32), dark)
    time.sleep(2.5)  # past the monitor's settle time

    monitoring = read_deployment(server, "monitor/hourly")
    without_scheduled_runs(server, monitoring)  # at :15 the schedule's own run would take the one slot
    flow_run = trigger(server, monitoring.id, {"data_dir": str(data_dir)})
    worker = server.run(PREFECT, "worker", "start", "--pool", POOL, "--run-once", timeout=240)
    run = wait_final(server, flow_run.id, timeout=30)
    assert run.state.is_completed(), f"{run.state!r}\n{worker.stdout[-4000:]}\n{worker.stderr[-4000:]}"
    (report,) = layout.monitor_reports.glob("*/monitor.json")
    summary = json.loads(report.read_text())
    assert summary["images"] == len(scored_ids) + len(dark) and summary["drift"] is True and "input" in summary["fired"]

    deadline = time.monotonic() + 30
    with server.client_settings(), get_client(sync_client=True) as client:
        while True:
            events = client.read_events(
                EventFilter(event=EventNameFilter(name=["cifar10.monitor.drift"])), limit=50
            ).events
            if events or time.monotonic() > deadline:
                break
            time.sleep(1)
    (event,) = events
    assert event.resource.id == f"cifar10.monitor.{data_dir}"
    assert event.payload["model_version"] == "v1" and event.payload["data_dir"] == str(data_dir)
    assert event.payload.keys() == EVENTS["cifar10.monitor.drift"].payload.keys()  # the reference page's keys
    assert set(event.payload["signals"]) == set(summary["fired"]) and event.payload["images"] == summary["images"]
