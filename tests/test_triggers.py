"""A retrain when data lands, against a real `prefect server start`: `prefect deploy` creates the
nightly deployment with its event trigger (an automation), and `flows/add_images.py` adding a batch
emits `cifar10.dataset.updated`, which makes the server create a flow run of that deployment for the
data directory that grew (read back through the API). No worker runs: the run stays scheduled.
Likewise a move of the champion by hand emits `cifar10.model.promoted`, which runs the monitor.

The loop from use: corrections sent to a real service (`POST /feedback`, with a reviewer's token)
become, through `flows/feedback_flow.py`, one batch, one event and one triggered retrain; corrections
of test images are all refused as leaks. One server serves the module; each test its own data dir."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from cifarflow.config import PipelineConfig
from cifarflow.data.dataset_versions import current_version
from cifarflow.data.ingest import ingest_source
from cifarflow.data.shards import read_split
from cifarflow.files import read_json
from cifarflow.journal import KILL_AT
from cifarflow.layout import DataLayout
from tests.live_server import PREFECT, REPO_ROOT, live_prefect_server
from tests.serving_helpers import encode, serving_process
from tests.synthetic import CLASSES
from tests.test_feedback_flow import answer, serve
from tests.test_growth import smooth_images

pytestmark = pytest.mark.server

SPEC = next(
    d
    for d in yaml.safe_load((REPO_ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]
    if d["name"] == "nightly-retrain"
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


def triggered_runs(server, deployment_id, data_dir: Path):
    """The deployment's flow runs that an automation created for `data_dir` (the schedule makes others); the
    pipeline's data dir is in its `config`, the monitor's a parameter of its own."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with server.client_settings(), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return [
        run
        for run in runs
        if run.created_by is not None
        and run.created_by.type == "AUTOMATION"
        and run.parameters.get("config", run.parameters)["data_dir"] == str(data_dir.resolve())
    ]


def wait_for_runs(server, deployment_id, data_dir: Path, timeout: float = 90) -> list:
    deadline = time.monotonic() + timeout
    while not (runs := triggered_runs(server, deployment_id, data_dir)) and time.monotonic() < deadline:
        time.sleep(1)
    return runs


def stored_events(
    server, data_dir: Path, at_least: int = 0, timeout: float = 30, name: str = "cifar10.dataset.updated"
) -> list:
    """The server's stored `name` events for `data_dir`, waiting up to `timeout` s for `at_least` of
    them: the server stores events in batches, after its triggers have seen them."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    deadline = time.monotonic() + timeout
    while True:
        with server.client_settings(), get_client(sync_client=True) as client:
            events = client.read_events(EventFilter(event=EventNameFilter(name=[name])), limit=50).events
        found = [e for e in events if e.resource.id == f"{name.rsplit('.', 1)[0]}.{data_dir.resolve()}"]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(1)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A live server with the work pool and every deployment of prefect.yaml; the nightly deployment."""
    from prefect.client.orchestration import get_client

    with live_prefect_server(tmp_path_factory.mktemp("server")) as server:
        pool = server.run(PREFECT, "work-pool", "create", SPEC["work_pool"]["name"], "--type", "process")
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deployed = server.run(PREFECT, "deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        with server.client_settings(), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("cifar10-pipeline/nightly-retrain")
            automations = [a for a in client.read_automations() if a.trigger.expect == {"cifar10.dataset.updated"}]
        assert len(automations) == 1 and automations[0].enabled
        assert str(deployment.id) in str(automations[0].actions[0])
        yield server, deployment


def test_adding_a_batch_creates_a_flow_run_of_the_triggered_deployment(deployed, tmp_path, synthetic_archive):
    server, deployment = deployed
    data_dir = tmp_path / "data"
    ingest_source(PipelineConfig(source=str(synthetic_archive), data_dir=data_dir, rows_per_shard=100))
    assert triggered_runs(server, deployment.id, data_dir) == []
    added = server.run(
        sys.executable, "flows/add_images.py", str(write_inbox(tmp_path / "inbox")), "--data-dir", str(data_dir)
    )
    assert added.returncode == 0, added.stdout + added.stderr
    assert "done: summary at" in added.stdout.strip().splitlines()[-1]

    runs = wait_for_runs(server, deployment.id, data_dir)
    assert len(runs) == 1, "the event trigger did not create a flow run within 90 s"
    assert runs[0].parameters["config"]["model"] == SPEC["parameters"]["config"]["model"]

    again = server.run(sys.executable, "flows/add_images.py", str(tmp_path / "inbox"), "--data-dir", str(data_dir))
    assert again.returncode == 0, again.stdout + again.stderr
    time.sleep(8)  # nothing new was added: no event, so no second run
    assert len(triggered_runs(server, deployment.id, data_dir)) == 1


def test_a_move_of_the_champion_by_hand_emits_its_event_and_one_lost_before_and_triggers_the_monitor(
    deployed, tmp_path, two_versions
):
    """`registry_flow.py promote v1` (a rollback from v2) emits `cifar10.model.promoted` with both versions, their
    accuracies from version.json, by, reason and the move's time, and first the event of the promotion to v2, which
    a killed run never sent; the monitor deployment's automation creates runs on that data dir (a run that keeps the
    champion emits nothing: tests/test_deployments.py)."""
    from prefect.client.orchestration import get_client

    from cifarflow.files import write_json
    from cifarflow.orchestration.events import ANNOUNCED
    from cifarflow.registry import store
    from tests.registry_helpers import copy_data_dir

    server, _ = deployed
    data_dir = copy_data_dir(two_versions, tmp_path / "data")
    registry = DataLayout(data_dir).registry
    lost = store.alias_moves(registry)[-1]  # the promotion to v2, counted as not announced, as a kill would leave it
    write_json(registry / ANNOUNCED, {"moves": len(store.alias_moves(registry)) - 1})
    command = ("flows/registry_flow.py", "promote", "v1", "--reason", "v2 misreads night photos", "--data-dir")
    moved = server.run(sys.executable, *command, str(data_dir))
    assert moved.returncode == 0, moved.stdout + moved.stderr

    events = stored_events(server, data_dir, at_least=2, name="cifar10.model.promoted")
    assert sorted(e.payload["to_version"] for e in events) == ["v1", "v2"]  # each move once
    (late,) = [e for e in events if e.payload["to_version"] == "v2"]
    assert (late.payload["by"], late.payload["at"], late.payload["from_version"]) == ("promotion", lost["at"], "v1")
    (event,) = [e for e in events if e.payload["to_version"] == "v1"]
    move = store.alias_moves(registry)[-1]
    assert event.payload == {
        "data_dir": str(data_dir.resolve()),
        "from_version": "v2",
        "to_version": "v1",
        "from_accuracy": store.read_version(registry, "v2").accuracy,
        "to_accuracy": store.read_version(registry, "v1").accuracy,
        "model_id": store.read_version(registry, "v1").model_id,
        "by": "hand",
        "reason": "v2 misreads night photos",
        "at": move["at"],
    }
    with server.client_settings(), get_client(sync_client=True) as client:
        monitor = client.read_deployment_by_name("monitor/hourly")
    runs = wait_for_runs(server, monitor.id, data_dir)
    assert runs and all(run.parameters == {"data_dir": str(data_dir.resolve())} for run in runs)
    assert read_json(registry / ANNOUNCED) == {"moves": len(store.alias_moves(registry))}


TOKEN = "carol-review-token-0123456789"


def test_corrections_sent_to_the_service_become_a_batch_and_a_retrain(
    deployed, tmp_path, synthetic_archive, two_versions
):
    """40 corrections of served new images and 10 of served test images, through POST /feedback with
    a reviewer's token; the feedback flow makes one batch of the 40 (the test images refused as leaks),
    the server gets one `cifar10.dataset.updated` and its automation creates one retrain; a second
    export adds nothing, so nothing more happens."""
    server, deployment = deployed
    data_dir = tmp_path / "data"
    layout = DataLayout(data_dir)
    ingest_source(PipelineConfig(source=str(synthetic_archive), data_dir=layout.root, rows_per_shard=100))
    shutil.copytree(two_versions / "registry", layout.registry, symlinks=True)  # a champion to serve
    before = current_version(layout)
    tokens = tmp_path / "review-tokens"
    tokens.write_text(f"carol:{TOKEN}\n")
    fresh, leaks = smooth_images(40, 77), read_split(layout.shard_manifest, "test")[0][:10]

    with (
        serving_process(data_dir, tmp_path / "serving.log", options=["--review-token-file", str(tokens)]) as service,
        httpx.Client(base_url=service.url, timeout=60) as client,
    ):
        for number, pixels in enumerate(np.concatenate([fresh, leaks])):
            served = client.post("/predict", files={"file": (f"{number}.png", encode(pixels))})
            assert served.status_code == 200, served.text
            right = next(c for c in CLASSES[number % 10 :] + CLASSES if c != served.json()["label"])  # a correction
            answered = client.post(
                "/feedback",
                json={"prediction_id": served.json()["prediction_id"], "label": right},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert answered.status_code == 200 and answered.json()["reviewer"] == "carol", answered.text

    exported = server.run(sys.executable, "flows/feedback_flow.py", "--data-dir", str(data_dir), timeout=240)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    last = exported.stdout.strip().splitlines()[-1]
    assert last.startswith("done: 50 answers: 40 added as batch ") and "10 refused" in last, last

    after = current_version(layout)
    (batch,) = [b for b in after.batches if b.batch_id not in {x.batch_id for x in before.batches}]
    assert batch.rows == 40 and read_json(batch.directory / "batch.json")["origin"]["reviewers"] == ["carol"]
    (summary_path,) = layout.feedback_exports.glob("*/summary.json")
    refused = [a for a in read_json(summary_path)["answers"] if a["verdict"] == "refused"]
    assert len(refused) == 10 and all("test-set leak" in a["reason"] for a in refused)

    runs = wait_for_runs(server, deployment.id, data_dir)
    assert len(runs) == 1, "the event trigger did not create a flow run within 90 s"
    assert len(stored_events(server, data_dir, at_least=1)) == 1

    again = server.run(sys.executable, "flows/feedback_flow.py", "--data-dir", str(data_dir), timeout=240)
    assert again.stdout.strip().splitlines()[-1] == "done: no new answers since the last export", again.stdout
    time.sleep(8)  # nothing new: no event, no second run
    assert len(triggered_runs(server, deployment.id, data_dir)) == 1
    assert len(stored_events(server, data_dir)) == 1


def run_killed_at(server, point: str, *args: str) -> None:
    """Run a command of the product that SIGKILLs itself at `point` (cifarflow/journal.py's test hook)."""
    killed = subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=server.env | {KILL_AT: point},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr


@pytest.mark.parametrize("point", ["add-images:batch-written", "feedback:batch-added"])
def test_a_feedback_export_killed_after_writing_its_batch_is_finished_by_the_next_run(
    deployed, tmp_path, synthetic_archive, point
):
    """Issue 28's case: `feedback_flow.py` SIGKILLed right after its batch is written, before the batch
    is announced (`add-images:batch-written`) or after, before the answers' outcomes are recorded
    (`feedback:batch-added`). The next run resumes that export: the 12 answers are `added` (not
    duplicates of their own batch), no second batch, and exactly one event (emitted now, if the kill
    came first), so the retrain is triggered once."""
    server, deployment = deployed
    data_dir = tmp_path / "data"
    layout = DataLayout(data_dir)
    ingest_source(PipelineConfig(source=str(synthetic_archive), data_dir=layout.root, rows_per_shard=100))
    ids = serve(data_dir, smooth_images(12, 88))
    for number, prediction_id in enumerate(ids):
        answer(data_dir, prediction_id, ("cat", "ship")[number % 2])
    command = ("flows/feedback_flow.py", "--data-dir", str(data_dir))

    run_killed_at(server, point, *command)
    (batch,) = current_version(layout).batches  # written; its answers' outcomes not recorded
    assert not layout.feedback_exported.exists()

    resumed = server.run(sys.executable, *command, timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    last = resumed.stdout.strip().splitlines()[-1]
    assert last.startswith(f"done: 12 answers: 12 added as batch {batch.batch_id} "), last
    assert "resumed export" in last and "which a killed run had left unfinished" in last, last
    assert [b.batch_id for b in current_version(layout).batches] == [batch.batch_id]
    exported = read_json(layout.feedback_exported)["answers"]
    assert sorted(exported) == sorted(ids) and {v["verdict"] for v in exported.values()} == {"added"}
    assert len(wait_for_runs(server, deployment.id, data_dir)) == 1, "no retrain was triggered within 90 s"
    assert len(stored_events(server, data_dir, at_least=1)) == 1

    again = server.run(sys.executable, *command, timeout=240)
    assert again.stdout.strip().splitlines()[-1] == "done: no new answers since the last export", again.stdout


@pytest.mark.parametrize(
    ("point", "said"),
    [
        ("add-images:journal-written", "first undid the add_images run killed before its batch"),
        ("add-images:batch-written", "first finished the add_images run killed after writing batch"),
    ],
)
def test_add_images_killed_mid_write_is_undone_or_finished_by_the_next_run(
    deployed, tmp_path, synthetic_archive, point, said
):
    """Killed before its batch is in place, the next run says it undid it and adds the images itself;
    killed after, the next run writes the killed run's report and emits its event, and finds the images
    already there. Either way: one batch, one event, one triggered retrain."""
    server, deployment = deployed
    data_dir = tmp_path / "data"
    layout = DataLayout(data_dir)
    ingest_source(PipelineConfig(source=str(synthetic_archive), data_dir=layout.root, rows_per_shard=100))
    command = ("flows/add_images.py", str(write_inbox(tmp_path / "inbox")), "--data-dir", str(data_dir))

    run_killed_at(server, point, *command)
    assert not list(layout.additions_reports.glob("*/summary.json"))  # killed before its report

    again = server.run(sys.executable, *command, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    last = again.stdout.strip().splitlines()[-1]
    assert said in last, last
    (batch,) = current_version(layout).batches
    assert batch.rows == 6 and not layout.intake_journal.exists()
    report = read_json(layout.additions_reports / batch.batch_id / "summary.json")
    assert report["added"] == 6 and report["dataset_version"] == current_version(layout).version
    assert len(wait_for_runs(server, deployment.id, data_dir)) == 1, "no retrain was triggered within 90 s"
    assert len(stored_events(server, data_dir, at_least=1)) == 1


def test_a_withdrawal_killed_before_its_event_is_announced_by_the_next_intake_run(
    deployed, tmp_path, synthetic_archive
):
    """`add_images.py --withdraw` SIGKILLed after the batch moved out, before its event: the next intake
    run (here adding the same images again) emits the withdrawal's event first and says so."""
    server, _ = deployed
    data_dir = tmp_path / "data"
    layout = DataLayout(data_dir)
    ingest_source(PipelineConfig(source=str(synthetic_archive), data_dir=layout.root, rows_per_shard=100))
    inbox = str(write_inbox(tmp_path / "inbox"))
    added = server.run(sys.executable, "flows/add_images.py", inbox, "--data-dir", str(data_dir))
    assert added.returncode == 0, added.stdout + added.stderr
    (batch,) = current_version(layout).batches
    assert len(stored_events(server, data_dir, at_least=1)) == 1

    run_killed_at(
        server, "withdraw:batch-moved", "flows/add_images.py", "--withdraw", batch.batch_id, "--data-dir", str(data_dir)
    )
    assert current_version(layout).batches == []  # moved out, not announced
    again = server.run(sys.executable, "flows/add_images.py", inbox, "--data-dir", str(data_dir))
    assert again.returncode == 0, again.stdout + again.stderr
    last = again.stdout.strip().splitlines()[-1]
    assert f"first finished the withdrawal of {batch.batch_id} killed before it was announced" in last, last
    events = stored_events(server, data_dir, at_least=3)  # the addition, the withdrawal, the new addition
    assert [e.payload.get("withdrawn") for e in events].count(batch.batch_id) == 1, [e.payload for e in events]
    assert len(events) == 3
