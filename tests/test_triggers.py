"""A retrain when data lands, against a real `prefect server start`: `prefect deploy` creates the
nightly deployment with its event trigger (an automation), and `flows/add_images.py` adding a batch
emits `cifar10.dataset.updated`, which makes the server create a flow run of that deployment for the
data directory that grew (read back through the API). No worker runs: the run stays scheduled."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cifarflow.data.ingest import ingest_archive
from cifarflow.layout import DataLayout
from tests.live_server import PREFECT, REPO_ROOT, live_prefect_server

pytestmark = pytest.mark.server

SPEC = next(
    d
    for d in yaml.safe_load((REPO_ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]
    if d["name"] == "nightly"
)


def test_the_nightly_deployment_declares_an_event_trigger_with_the_same_parameters():
    (trigger,) = SPEC["triggers"]
    assert trigger["type"] == "event" and trigger["expect"] == ["cifar10.dataset.updated"]
    assert trigger["match"] == {"prefect.resource.id": "cifar10.dataset.*"}
    config = trigger["parameters"]["config"]
    assert config == SPEC["parameters"]["config"] | {"data_dir": "{{ event.payload.data_dir }}"}


def write_inbox(root: Path, count: int = 6) -> Path:
    rng = np.random.default_rng(11)
    for i in range(count):
        folder = root / ("cat", "ship")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def triggered_runs(server, deployment_id):
    """The deployment's flow runs that an automation created (the nightly schedule makes others)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with server.client_settings(), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return [run for run in runs if run.created_by is not None and run.created_by.type == "AUTOMATION"]


def test_adding_a_batch_creates_a_flow_run_of_the_triggered_deployment(tmp_path, synthetic_archive):
    from prefect.client.orchestration import get_client

    with live_prefect_server(tmp_path / "server") as server:
        pool = server.run(PREFECT, "work-pool", "create", SPEC["work_pool"]["name"], "--type", "process")
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deployed = server.run(PREFECT, "deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        with server.client_settings(), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("cifar10-pipeline/nightly")
            automations = [a for a in client.read_automations() if a.trigger.expect == {"cifar10.dataset.updated"}]
        assert len(automations) == 1 and automations[0].enabled
        assert str(deployment.id) in str(automations[0].actions[0])
        assert triggered_runs(server, deployment.id) == []

        data_dir = tmp_path / "data"
        ingest_archive(str(synthetic_archive), DataLayout(data_dir), rows_per_shard=100)
        added = server.run(
            sys.executable, "flows/add_images.py", str(write_inbox(tmp_path / "inbox")), "--data-dir", str(data_dir)
        )
        assert added.returncode == 0, added.stdout + added.stderr
        assert "done: summary at" in added.stdout.strip().splitlines()[-1]

        deadline = time.monotonic() + 90
        while not (runs := triggered_runs(server, deployment.id)) and time.monotonic() < deadline:
            time.sleep(1)
        assert len(runs) == 1, "the event trigger did not create a flow run within 90 s"
        assert runs[0].parameters["config"]["data_dir"] == str(data_dir.resolve())
        assert runs[0].parameters["config"]["model"] == SPEC["parameters"]["config"]["model"]

        again = server.run(sys.executable, "flows/add_images.py", str(tmp_path / "inbox"), "--data-dir", str(data_dir))
        assert again.returncode == 0, again.stdout + again.stderr
        time.sleep(8)  # nothing new was added: no event, so no second run
        assert len(triggered_runs(server, deployment.id)) == 1
