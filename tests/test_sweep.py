"""Sweeps: the search space (pure units), then a real sweep on a two-process Dask LocalCluster.

The sweep test trains four tiny configurations on the synthetic archive, one of which diverges
(learning rate 9 with RMSprop: the loss explodes to ~1e8 in the first epoch; a NaN is out of reach
because PipelineConfig caps the learning rate below 10), then runs the same sweep again and
expects every finished trial to come back `Cached`.
"""

from __future__ import annotations

import json

import pytest

from cifarflow.config import PipelineConfig
from cifarflow.errors import PipelineInputError
from cifarflow.orchestration.trials import REPORT_STAGES, TRIAL_STAGES
from cifarflow.sweep.space import build_trials, check_space, expand_space, merge_space, sweep_name

# ------------------------------------------ pure units -----------------------------------------


def test_grid_expands_to_cartesian_product_plus_explicit_trials():
    space = check_space(
        {
            "base": {"epochs": 2},
            "grid": {"learning_rate": [0.1, 0.01], "batch_size": [32, 64]},
            "trials": [{"learning_rate": 0.5}, {"learning_rate": 0.1, "batch_size": 32}],  # 2nd is a duplicate
        }
    )
    trials = expand_space(space)
    assert len(trials) == 5
    assert trials[0] == {"epochs": 2, "batch_size": 32, "learning_rate": 0.1}
    assert trials[-1] == {"epochs": 2, "learning_rate": 0.5}


def test_command_line_axis_replaces_the_files():
    space = merge_space({"grid": {"learning_rate": [0.1], "seed": [1, 2]}}, {"learning_rate": [0.3, 0.4], "seed": None})
    assert space["grid"] == {"learning_rate": [0.3, 0.4], "seed": [1, 2]}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"grid": {"normalization": ["unit", "standardize"]}}, "shared by all trials"),
        ({"grid": {"learning_rat": [0.1]}}, "not a config field"),
        ({"grid": {"learning_rate": []}}, "non-empty lists"),
        ({"grdi": {}}, "unknown key"),
    ],
)
def test_bad_spaces_are_rejected_with_a_reason(space, message):
    with pytest.raises(PipelineInputError, match=message):
        check_space(space)


def test_trials_are_validated_configs_with_stable_names(synthetic_archive, tmp_path):
    base = PipelineConfig(source=str(synthetic_archive), data_dir=tmp_path / "data")
    trials = build_trials(base, merge_space(None, {"learning_rate": ["0.01", 0.02], "epochs": [3]}))
    assert [t.name for t in trials] == ["01-classic-lr0.01-e3-b32-s42", "02-classic-lr0.02-e3-b32-s42"]
    assert trials[0].config.learning_rate == 0.01 and trials[0].config.data_dir == base.data_dir
    assert sweep_name(None, trials) == sweep_name(
        None, build_trials(base, merge_space(None, {"learning_rate": ["0.01", 0.02], "epochs": [3]}))
    )
    with pytest.raises(PipelineInputError, match="learning_rate"):
        build_trials(base, merge_space(None, {"learning_rate": [100.0]}))


# ------------------------------------ a real Dask sweep ------------------------------------

SPACE = {
    "name": "tiny",
    "base": {"epochs": 1},
    "grid": {"learning_rate": [0.001, 0.003, 9.0], "batch_size": [64]},
    "trials": [{"learning_rate": 0.001, "batch_size": 32}],
}
DIVERGING = "03-classic-lr9-e1-b64-s42"


def _task_run_states(flow_run_id: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.state.name for run in runs}


@pytest.mark.usefixtures("prefect_server")
def test_sweep_on_a_two_worker_local_cluster_reports_failures_and_reuses_cached_trials(tiny_config):
    from cifarflow.registry.store import read_champion_version
    from flows.sweep_flow import cifar_sweep

    config = tiny_config.model_copy(update={"epochs": None})
    first = cifar_sweep(config=config, space=SPACE, n_workers=2)

    assert first["cluster"]["workers"] == 2 and first["cluster"]["threads"] == [1, 1]
    by_trial = {t["trial"]: t for t in first["trials"]}
    assert len(by_trial) == 4
    assert by_trial[DIVERGING]["status"] == "failed"
    assert "TrainingDiverged" in by_trial[DIVERGING]["error"] and by_trial[DIVERGING]["states"]["train"] == "Failed"
    assert by_trial[DIVERGING]["states"]["evaluate"] == "NotRun" and by_trial[DIVERGING]["states"]["report"] == "NotRun"
    finished = [t for t in first["trials"] if t["trial"] != DIVERGING]
    assert all(t["status"] == "completed" and t["states"]["train"] == "Completed" for t in finished)
    for trial in finished:  # each trial reported like a normal run, in its own directory
        metrics = json.loads(
            (tiny_config.layout.reports / trial["report"].rsplit("/", 1)[-1] / "metrics.json").read_text()
        )
        assert metrics["test_accuracy"] == pytest.approx(trial["test_accuracy"])
    assert len({t["report"] for t in finished}) == 3

    leaderboard = (tiny_config.layout.reports / "sweeps" / "tiny" / "leaderboard.md").read_text()
    assert all(name in leaderboard for name in by_trial)
    assert "**failed**" in leaderboard and "TrainingDiverged" in leaderboard
    rows = json.loads((tiny_config.layout.reports / "sweeps" / "tiny" / "leaderboard.json").read_text())["trials"]
    assert [r["rank"] for r in rows] == [1, 2, 3, None]
    assert rows[0]["test_accuracy"] >= rows[1]["test_accuracy"] >= rows[2]["test_accuracy"]
    assert (tiny_config.layout.reports / "sweeps" / "tiny" / "accuracy_vs_time.png").stat().st_size > 0

    assert read_champion_version(tiny_config.layout.registry) is None  # no --promote: the registry is untouched
    # again, now with --promote: the best trial goes through the pipeline's own promote stage, through the
    # same runner and stage declarations as a nightly run, and becomes the registry's first version
    second = cifar_sweep(config=config, space=SPACE, n_workers=2, promote_best=True)
    assert second["best"] == rows[0]["trial"] and second["promotion"].startswith("promoted"), second["promotion"]
    champion = read_champion_version(tiny_config.layout.registry)
    assert champion.name == "v1" and champion.run_name == rows[0]["report"].rsplit("/", 1)[-1]
    assert (tiny_config.layout.stage_state / "promote.json").is_file()  # recorded as the pipeline's last promote
    again = {t["trial"]: t for t in second["trials"]}
    assert again[DIVERGING]["status"] == "failed"  # a diverging configuration is never cached
    for trial in finished:
        assert again[trial["trial"]]["status"] == "cached", again[trial["trial"]]
        assert again[trial["trial"]]["states"] == dict.fromkeys(TRIAL_STAGES + REPORT_STAGES, "Cached")
        assert again[trial["trial"]]["report"] == trial["report"]
    recorded = _task_run_states(second["trials_flow_run_id"])  # the same, as the Prefect API saw it
    assert sorted(state for name, state in recorded.items() if name.startswith("train-")) == ["Cached"] * 3 + ["Failed"]
