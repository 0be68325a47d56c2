"""What the Prefect UI shows for a pipeline run: checked through the API, then end to end in a
headless Chromium (Playwright driving the system browser; `playwright install` is never run).

Screenshots go to the test's tmp dir and are copied to /tmp/ui-screenshots/ for a human to look at.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.browser import launched_chromium, require_chromium
from tests.live_server import live_prefect_server

SCREENSHOTS = Path("/tmp/ui-screenshots")
FLOW_ARTIFACTS = {
    "cifar10-report-classic",
    "cifar10-per-class-classic",
    "cifar10-report-dir-classic",
    "cifar10-promotion-classic",
    "cifar10-model-registry",
}

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """A server, and two pipeline runs on synthetic data made against it through the flow's CLI:
    the first becomes champion, the second (another seed, 2 epochs) is judged against it."""
    from tests.synthetic import write_archive

    tmp = tmp_path_factory.mktemp("ui")
    archive = write_archive(tmp / "source" / "cifar-10-python.tar.gz")
    with live_prefect_server(tmp / "server") as server:
        command = [sys.executable, "flows/cifar_flow.py", "--source", str(archive), "--data-dir", str(tmp / "data")]
        for extra in (["--epochs", "1"], ["--epochs", "2", "--seed", "7"]):
            done = server.run(*command, *extra, "--rows-per-shard", "100", timeout=300)
            assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

        from prefect.client.orchestration import get_client

        with server.client_settings(), get_client(sync_client=True) as client:
            runs = {run.name.split("-")[1]: run for run in client.read_flow_runs()}
        assert set(runs) == {"e1", "e2"}
        yield server, runs["e1"], runs["e2"], tmp


def test_api_shows_states_artifacts_and_epoch_logs(finished_runs):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    server, flow_run, _, _ = finished_runs
    assert flow_run.state.is_completed() and flow_run.name.startswith("classic-e1-")
    runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
    with server.client_settings(), get_client(sync_client=True) as client:
        tasks = {t.name: t.state.name for t in client.read_task_runs(flow_run_filter=runs)}
        artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=runs)}
        logs = [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))]
    assert tasks == dict.fromkeys(
        [
            "ingest",
            "validate",
            "preprocess-unit",
            "train-classic-e1",
            "evaluate-classic",
            "calibrate-classic",
            "robustness-classic",
            "report-classic",
            "promote-classic",
        ],
        "Completed",
    )
    assert "Dataset version" in artifacts["cifar10-data-validation"].data  # the validate stage's table
    assert FLOW_ARTIFACTS <= set(artifacts)
    report = artifacts["cifar10-report-classic"].data
    assert "# CIFAR-10 run" in report and "## Champion vs challenger" in report and "promoted: first champion" in report
    assert "](data:image/png;base64," in report and "](confusion_matrix.png)" not in report  # plots inlined
    assert artifacts["cifar10-promotion-classic"].description.startswith("promoted: first champion")
    assert artifacts["cifar10-per-class-classic"].type == "table"
    progress = artifacts["training-progress-classic"]  # created by the train task, updated every epoch
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert any(m.startswith("epoch 1/1: accuracy") for m in logs)
    assert any(m.startswith("promoted: first champion") for m in logs)


def test_api_shows_the_second_run_judged_against_the_champion(finished_runs):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    server, first, second, _ = finished_runs
    runs = FlowRunFilter(id=FlowRunFilterId(any_=[second.id]))
    with server.client_settings(), get_client(sync_client=True) as client:
        tasks = {t.name: t.state.name for t in client.read_task_runs(flow_run_filter=runs)}
        artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=runs)}
    assert tasks == {  # the data stages reused (their task runs end `Cached`), the model's retrained
        "ingest": "Cached",
        "validate": "Cached",
        "preprocess-unit": "Cached",
        "train-classic-e2": "Completed",
        "evaluate-classic": "Completed",
        "calibrate-classic": "Completed",
        "robustness-classic": "Completed",
        "report-classic": "Completed",
        "promote-classic": "Completed",
    }
    summary = artifacts["cifar10-promotion-classic"].description
    assert summary.startswith(("promoted: 0.", "kept champion: difference ")), summary
    report = artifacts["cifar10-report-classic"].data
    assert "### Per-class F1" in report and "![confusion matrix change](data:image/png;base64," in report


def test_browser_shows_completed_run_and_report_artifact(finished_runs):
    require_chromium()
    import playwright.sync_api as playwright

    server, _, flow_run, tmp = finished_runs  # the second run: a champion-vs-challenger comparison
    shots = tmp / "screenshots"
    shots.mkdir()
    with launched_chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{server.url}/runs/flow-run/{flow_run.id}", wait_until="networkidle", timeout=60_000)
        header = page.get_by_text(flow_run.name, exact=True).first
        playwright.expect(header).to_be_visible(timeout=30_000)
        playwright.expect(page.get_by_text("Completed", exact=True).first).to_be_visible(timeout=30_000)
        playwright.expect(page.get_by_text("promote-classic").first).to_be_visible(timeout=30_000)  # run graph
        page.screenshot(path=shots / "flow-run.png")

        page.get_by_text("Artifacts", exact=True).first.click()
        for key in sorted(FLOW_ARTIFACTS):
            playwright.expect(page.get_by_text(key, exact=True).first).to_be_visible(timeout=30_000)
        page.screenshot(path=shots / "flow-run-artifacts.png")

        page.get_by_text("cifar10-report-classic", exact=True).first.click()
        section = page.get_by_role("heading", name="Champion vs challenger")
        playwright.expect(section).to_be_visible(timeout=30_000)
        playwright.expect(page.get_by_role("heading", name="Per-class metrics (test set)")).to_be_visible()
        page.wait_for_load_state("networkidle")
        loaded = page.eval_on_selector_all("img[src^='data:image/png']", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(loaded) == 5 and all(width > 100 for width in loaded), loaded  # 3 plots, reliability, difference
        page.screenshot(path=shots / "report-artifact.png")  # the report's top
        # the page scrolls in an inner pane, so full_page screenshots miss the rest: scroll to it
        section.scroll_into_view_if_needed()
        page.screenshot(path=shots / "report-champion-challenger.png")
        page.get_by_role("img", name="confusion matrix change").scroll_into_view_if_needed()
        page.screenshot(path=shots / "report-confusion-change.png")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for shot in shots.glob("*.png"):
        assert shot.stat().st_size > 10_000, shot  # a rendered page, not a blank one
        shutil.copy2(shot, SCREENSHOTS / shot.name)
