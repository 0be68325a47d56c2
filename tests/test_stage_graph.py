"""The stage graph is declared once, in the specs: every task takes exactly its declared inputs, the
flow passes exactly those, and each of them enters the stage's key."""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest

from cifarflow.orchestration.cache import StageSpec, key_parts
from cifarflow.orchestration.runner import StageRunner, stage_task
from cifarflow.orchestration.stages import SPECS, STAGES
from tasks import stage_tasks

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Output:
    fingerprint: str


def stand_in(spec: StageSpec) -> StageSpec:
    """`spec` with its disk reads replaced: derived key inputs off, each given value a fixed Output."""
    given = tuple((name, lambda config, upstream, name=name: Output(f"given {name}")) for name, _ in spec.given)
    return replace(spec, inputs=None, given=given)


def every_output() -> dict[str, Output]:
    return {stage: Output(f"output of {stage}") for stage in STAGES}


def config_for(spec: StageSpec) -> SimpleNamespace:
    return SimpleNamespace(**{name: f"value of {name}" for name in spec.params})


def test_every_declared_stage_has_a_task_of_its_name():
    assert [task.name for task in stage_tasks().values()] == list(STAGES)  # importing them checks their parameters


@pytest.mark.parametrize("stage", STAGES)
def test_the_runner_hands_a_task_its_declared_inputs_and_nothing_else(stage):
    spec = stand_in(SPECS[stage])
    inputs = spec.resolve_inputs(config_for(spec), every_output())  # every other stage's output is there too
    assert set(inputs) == set(spec.task_parameters) - {"config", "key"}
    assert all(inputs[name] == Output(f"output of {name}") for name in spec.upstream)


@pytest.mark.parametrize("stage", STAGES)
def test_every_input_a_task_receives_enters_its_key(stage):
    spec = stand_in(SPECS[stage])
    config = config_for(spec)
    inputs = spec.resolve_inputs(config, every_output())
    base = key_parts(spec, config, inputs).key
    for name in inputs:
        changed = inputs | {name: Output("something else")}
        assert key_parts(spec, config, changed).key != base, f"{stage}'s key ignores its input {name}"


def test_a_task_with_an_undeclared_or_missing_input_is_refused_at_import():
    with pytest.raises(TypeError, match=r"takes \(config, key, ingest, features\), but its spec declares"):

        @stage_task("validate", retries=0, delay=1)
        def validate(config, key, ingest, features):  # `features` is not declared: it would not enter the key
            return None

    with pytest.raises(TypeError, match="declares"):

        @stage_task("train", retries=0, delay=1)
        def train(config, key, preprocess):  # the declared `warm_start_from` is not taken
            return None


def test_a_stage_called_before_its_upstream_is_an_error():
    with pytest.raises(KeyError, match="runs before preprocess"):
        stand_in(SPECS["evaluate"]).resolve_inputs(None, {"train": Output("model")})


def test_a_flow_passing_other_inputs_than_declared_is_refused_at_the_call(tiny_config):
    tasks = stage_tasks()
    outputs = every_output()
    runner = StageRunner(tiny_config, outputs=outputs)
    for passed in ([outputs["preprocess"]], [outputs["train"], outputs["preprocess"]], [outputs["preprocess"]] * 2):
        with pytest.raises(TypeError, match=r"must pass the outputs of \(preprocess, train\), in that order"):
            runner(tasks["evaluate"], *passed)
    with pytest.raises(TypeError, match=r"outputs of \(\)"):
        runner(tasks["ingest"], outputs["ingest"])


def test_a_flow_that_skips_a_declared_stage_is_refused(tiny_config):
    runner = StageRunner(tiny_config)
    runner.outputs = {stage: SimpleNamespace(location=f"/{stage}") for stage in STAGES if stage != "report"}
    with pytest.raises(RuntimeError, match="never ran stage.s. report"):
        runner.locations()
    runner.outputs["report"] = SimpleNamespace(location="/report")
    assert list(runner.locations()) == list(STAGES)
