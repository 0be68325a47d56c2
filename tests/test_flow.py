"""The whole pipeline under a real (temporary) Prefect server, on a tiny synthetic archive."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest

from cifarflow.data.transform import load_split
from cifarflow.files import read_json
from cifarflow.orchestration.stages import SPECS
from cifarflow.registry.saved_model import load_export
from cifarflow.registry.store import read_champion_version
from cifarflow.robustness.robustness import SEVERITIES
from tests.flow_helpers import ALL_CACHED, ALL_COMPLETED, run_flow
from tests.markdown_check import wrapped_lines

pytestmark = pytest.mark.usefixtures("prefect_server")

CONTRACT_KEYS = {
    "test_accuracy",
    "test_loss",
    "classification_report",
    "confusion_matrix",
    "class_names",
    "model",
    "epochs",
    "train_seconds",
    "source_sha256",
}


def test_end_to_end_then_cached_then_downstream_only(tiny_config, capfd):
    state, first = run_flow(tiny_config)
    assert state.is_completed(), state.message
    assert first == ALL_COMPLETED
    check_outputs_where_declared(tiny_config, state.result())
    printed = "".join(capfd.readouterr())
    assert "Epoch 1/1" not in printed  # Keras' own epoch line: the train task logs each epoch once, itself

    latest = tiny_config.layout.latest_report
    assert latest.is_symlink() and (latest / "report.md").is_file()
    assert not os.path.isabs(os.readlink(latest))  # relative: the data dir can move (tests/test_portable_data_dir.py)
    metrics = read_json(latest / "metrics.json")
    assert CONTRACT_KEYS <= metrics.keys()
    assert metrics["model"] == "classic" and metrics["epochs"] == 1
    assert len(metrics["confusion_matrix"]) == 10 and all(len(row) == 10 for row in metrics["confusion_matrix"])
    assert sum(map(sum, metrics["confusion_matrix"])) == 100
    assert metrics["class_names"][0] == "airplane" and "macro avg" in metrics["classification_report"]
    assert metrics["test_accuracy"] > 0.3  # 10 visually distinct synthetic classes: chance is 0.1
    for plot in ("confusion_matrix.png", "training_curves.png", "sample_predictions.png"):
        assert (latest / plot).read_bytes()[:4] == b"\x89PNG"
    card = read_json(latest / "model_card.json")
    assert card["params"] == 394_970 and card["source_sha256"] == metrics["source_sha256"]
    assert "keras" in card["libraries"]
    check_calibration_and_robustness(tiny_config, latest, metrics)

    with flow_log() as logged:
        state, second = run_flow(tiny_config)
    assert state.is_completed()
    assert second == ALL_CACHED
    assert any("nothing to watch" in line and "--refresh train" in line for line in logged)  # says how to force it

    state, third = run_flow(tiny_config.model_copy(update={"epochs": 2}))
    retrained = dict.fromkeys(["train", "evaluate", "calibrate", "robustness", "report", "promote"], "Completed")
    assert third == ALL_CACHED | retrained
    assert read_json(tiny_config.layout.latest_report / "metrics.json")["epochs"] == 2
    assert metrics["train_images"] == 300 and metrics["dataset_version"] == card["dataset_version"]


def check_outputs_where_declared(config, locations: dict[str, str]):
    """Each stage's output is where its spec's `writes` says (the stages reference page shows it): `<key>` is the
    key the stage recorded, another `<…>` one path part; a trailing `/` a folder."""
    assert list(locations) == list(SPECS)
    for stage, location in locations.items():
        writes, key = SPECS[stage].writes, read_json(config.layout.stage_state / f"{stage}.json")["key"]
        parts = re.split(r"(<[a-z-]+>)", writes.rstrip("/"))
        pattern = "".join(key if p == "<key>" else "[^/]+" if p.startswith("<") else re.escape(p) for p in parts)
        assert re.fullmatch(pattern, Path(location).relative_to(config.layout.root).as_posix()), (stage, location)
        assert Path(location).is_dir() == writes.endswith("/"), (stage, location)


@contextlib.contextmanager
def flow_log():
    """The flow runs' log lines at INFO and above while inside (the tests' Prefect logs only warnings)."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("prefect.flow_runs")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def check_calibration_and_robustness(config, report_dir, metrics):
    """The calibrate and robustness stages' figures in the report, and the temperature in the champion's export."""
    calibration, robustness = metrics["calibration"], metrics["robustness"]
    assert metrics["temperature"] == calibration["temperature"] > 0
    assert metrics["ece"] == calibration["after"]["ece"] and {"nll", "brier"} <= metrics.keys()
    assert calibration["before"]["accuracy"] == calibration["after"]["accuracy"] == metrics["test_accuracy"]
    assert calibration["halves"]["A"] + calibration["halves"]["B"] == calibration["images"] == 100
    assert robustness["images"] == 100 and sorted(robustness["corruptions"]) == sorted(SEVERITIES)
    assert robustness["clean_accuracy"] == pytest.approx(metrics["test_accuracy"])  # 100 test images < the subset
    report = (report_dir / "report.md").read_text()
    assert "## Calibration" in report and "## Robustness to corrupted images" in report
    assert not wrapped_lines(report)  # no paragraph hard-wrapped (the UI would show its ragged lines)
    assert "![reliability diagram](reliability.png)" in report
    assert (report_dir / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    promotion = (report_dir / "promotion.md").read_text()
    assert "this is promotion decision 1 on these test images" in promotion and "### Robustness" in promotion

    champion = read_champion_version(config.layout.registry).directory
    assert read_json(champion / "version.json")["temperature"] == metrics["temperature"]
    assert read_json(champion / "version.json")["test_set_decisions"] == 1
    assert read_json(report_dir / "model_card.json")["test_set_decisions"] == 1
    assert read_json(report_dir / "promotion.json")["test_set_decisions"] == 1
    card = (report_dir / "README.md").read_text()  # the standard model card, rewritten by promote: the version's own
    assert f"registry version **{champion.name}**" in card and (champion / "README.md").read_text() == card
    (features,) = config.layout.features.iterdir()
    (calibrated,) = config.layout.calibrations.glob("*/probabilities.npy")
    exported = load_export(champion / "export").probabilities(load_split(features, "test", "pixels"))
    np.testing.assert_allclose(exported, np.load(calibrated), atol=1e-4)  # what the service and batch prediction get
    raw = np.load(next(config.layout.evaluations.glob("*/probabilities.npy")))
    if metrics["temperature"] != 1.0:
        assert np.abs(exported - raw).max() > 1e-3  # and not the network's own probabilities


def test_damaged_outputs_are_recomputed_not_handed_on(tiny_config):
    run_flow(tiny_config)
    layout = tiny_config.layout
    shard = layout.split_dir("train") / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated after ingest
    model = next(layout.models.glob("*/model.keras"))
    model.unlink()  # a model file lost
    state, states = run_flow(tiny_config)
    assert state.is_completed()
    assert states["ingest"] == "Completed" and states["train"] == "Completed"
    assert model.is_file()


def test_refresh_and_single_stages(tiny_config):
    run_flow(tiny_config)
    _, refreshed = run_flow(tiny_config, refresh=["evaluate"])
    # recomputed, evaluate gives the same output (same fingerprint): the stages reading it stay cached
    assert refreshed == ALL_CACHED | {"evaluate": "Completed"}
    _, alone = run_flow(tiny_config, stages=["evaluate", "report", "promote"], refresh=["evaluate", "report"])
    assert alone == {"evaluate": "Completed", "report": "Completed", "promote": "Completed"}


def test_stage_without_upstream_output_fails_clearly(tiny_config):
    state, _ = run_flow(tiny_config, stages=["train"])
    assert state.is_failed()
    with pytest.raises(Exception, match="stage 'ingest' has no output for this configuration yet"):
        state.result()


def test_failed_stage_fails_the_flow_and_next_run_resumes_there(tiny_config, monkeypatch):
    import tasks.evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("plotting backend exploded")

    monkeypatch.setattr(tasks.evaluate, "evaluate_model", broken)
    state, states = run_flow(tiny_config)
    assert state.is_failed() and states["evaluate"] == "Failed" and states["train"] == "Completed"
    with pytest.raises(RuntimeError, match="plotting backend exploded"):
        state.result()
    monkeypatch.undo()
    state, states = run_flow(tiny_config)
    assert state.is_completed()
    reran = ["evaluate", "calibrate", "robustness", "report", "promote"]
    assert states == ALL_CACHED | dict.fromkeys(reran, "Completed")
