"""MLflow tracking, the lab notebook beside the registry: each pipeline run, sweep trial and monitor run becomes an
MLflow run (params, per-epoch and final metrics, its report folder as artifacts, tags). On when the `mlflow` extra is
installed, off with CIFARFLOW_TRACKING=off; the only module that imports MLflow. A tracking failure is warned once
(logger `cifarflow.tracking`) and never fails the run."""

from __future__ import annotations

import cifarflow.environment  # MLflow's retries and telemetry set before it is imported

import contextlib
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.context import FlowRunContext

from cifarflow.data.ingest import dataset_name
from cifarflow.files import read_json
from cifarflow.layout import DataLayout
from cifarflow.outputs import StageOutput, read_whole

if TYPE_CHECKING:
    from cifarflow.config import PipelineConfig
    from cifarflow.monitoring.monitor import MonitorSummary
    from cifarflow.registry.store import Version

log = logging.getLogger("cifarflow.tracking")

# what the pipeline config resolves from the preset when unset: logged as the values used
RESOLVED = {"epochs": "train_epochs", "batch_size": "train_batch_size", "learning_rate": "train_learning_rate"}
RESOLVED |= {"normalization": "resolved_normalization"}


def tracking_uri(layout: DataLayout) -> str:
    """MLFLOW_TRACKING_URI if set (a team server), else the data dir's own store `sqlite:///<abs dir>/mlflow.db`;
    ValueError for a data dir whose path has a '?', which a SQLite URL cannot carry (it starts the URL's query)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if "?" in str(layout.mlflow_db):
        raise ValueError(f"{layout.root} has a '?' in its path, which a sqlite:/// URL cannot name")
    return f"sqlite:///{layout.mlflow_db}"


@contextlib.contextmanager
def tracked_pipeline(config: PipelineConfig, runner: Any) -> Iterator[None]:
    """The pipeline's Prefect flow run (its name, start and id) as one MLflow run when the block ends, from the
    `runner`'s (StageRunner) outputs, computed or reused (Cached); FAILED with the error's name when the block raised,
    with what its stages made until then."""
    flow_run = FlowRunContext.get().flow_run
    try:
        yield
    except BaseException as error:
        failure = f"{type(error).__name__}: {error}"
        _track(config.layout, "", functools.partial(_log_pipeline, config, runner, flow_run, failure))
        raise
    _track(config.layout, "", functools.partial(_log_pipeline, config, runner, flow_run, None))


def track_sweep(
    config: PipelineConfig,
    sweep: str,
    trials: list,
    reported: Mapping[str, tuple],
    board: Path,
) -> None:
    """A parent MLflow run for the sweep's flow run (its leaderboard folder `board`) and a child run per trial
    (`Trial`s; `reported`: trial name → (leaderboard row, the trial's stage outputs or None when it failed))."""
    flow_run = FlowRunContext.get().flow_run
    _track(config.layout, "", functools.partial(_log_sweep, sweep, trials, reported, board, flow_run))


def track_monitor(layout: DataLayout, champion: Version, result: MonitorSummary) -> None:
    """One MLflow run (experiment "<data set> monitoring") for a monitor flow run's verdict on `champion`."""
    _track(layout, " monitoring", functools.partial(_log_monitor, champion, result, FlowRunContext.get().flow_run))


def _track(layout: DataLayout, suffix: str, record: Callable[[Any, str], None]) -> None:
    """`record(client, experiment_id)` unless tracking is off or MLflow is not installed; any failure warned."""
    if os.environ.get("CIFARFLOW_TRACKING", "").strip().lower() in ("off", "0", "false", "no"):
        return
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"the store in {layout.root}"
    try:
        uri = tracking_uri(layout)
        try:
            from mlflow import MlflowClient  # here: without the extra, or turned off, nothing imports MLflow
        except ModuleNotFoundError as error:
            if error.name == "mlflow":
                return  # the `mlflow` extra is not installed
            raise
        client = MlflowClient(tracking_uri=uri)
        record(client, _experiment_id(client, layout, suffix, uri))
    except Exception as error:  # the run is done whatever happens here
        log.warning(
            "MLflow tracking at %s failed, the run goes on untracked (%s: %s); fix MLFLOW_TRACKING_URI or turn "
            "tracking off with CIFARFLOW_TRACKING=off",
            uri,
            type(error).__name__,
            error,
        )


def _experiment_id(client: Any, layout: DataLayout, suffix: str, uri: str) -> str:
    """The data set's experiment (created on first use; its artifacts in the data dir when the store is)."""
    source = read_whole(lambda: read_json(layout.shard_manifest)["source"])
    name = (dataset_name(source) if source else "cifarflow") + suffix
    own = uri == f"sqlite:///{layout.mlflow_db}"
    location = layout.mlflow_artifacts.as_uri() if own else None
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:
            found = client.get_experiment_by_name(name)  # another run created it meanwhile, else the error stands
            if found is None:
                raise
    if own and found.artifact_location != location:  # MLflow keeps absolute paths: never write to the old place
        raise RuntimeError(
            f"{layout.mlflow_db} keeps its artifacts in {found.artifact_location}, not in this data dir (it was "
            "moved or copied): move mlflow.db and mlflow-artifacts aside to start a new store here"
        )
    return found.experiment_id


@contextlib.contextmanager
def _mlflow_run(
    client: Any, experiment: str, name: str, tags: Mapping[str, Any], flow_run: Any = None, failed: bool = False
) -> Iterator[str]:
    """A run id; the run started with Prefect's `flow_run` (else now), FINISHED after the block (FAILED if it raised,
    or `failed`)."""
    started = flow_run and flow_run.start_time and int(flow_run.start_time.timestamp() * 1000)
    tags = {**tags, "prefect.flow_run_id": flow_run and flow_run.id}
    run_id = client.create_run(experiment, start_time=started, run_name=name, tags=_tags(tags)).info.run_id
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def _log_pipeline(config, runner, flow_run, failure, client, experiment) -> None:
    tags = {"kind": "pipeline", "reused_stages": ",".join(sorted(runner.cached)), "error": failure}
    with _mlflow_run(client, experiment, flow_run.name, tags, flow_run, failed=failure is not None) as run_id:
        _log_stages(client, run_id, config, runner.outputs)


def _log_sweep(sweep, trials, reported, board, flow_run, client, experiment) -> None:
    with _mlflow_run(client, experiment, flow_run.name, {"kind": "sweep", "sweep": sweep}, flow_run) as parent:
        client.log_artifacts(parent, str(board))
        for trial in trials:
            row, outputs = reported[trial.name]
            tags = {"kind": "sweep trial", "sweep": sweep, "mlflow.parentRunId": parent, "status": row["status"]}
            tags |= {"error": row.get("error")}
            with _mlflow_run(client, experiment, trial.name, tags, failed=outputs is None) as run_id:
                _log_stages(client, run_id, trial.config, outputs or {})


def _log_stages(client: Any, run_id: str, config: PipelineConfig, outputs: Mapping[str, StageOutput]) -> None:
    """Params from `config`, and from the outputs present: per-epoch history, metrics.json, the report folder, tags."""
    params = config.model_dump(mode="json") | {name: getattr(config, value) for name, value in RESOLVED.items()}
    tags: dict[str, Any] = {"preset": config.model}
    metrics = []
    if "validate" in outputs:
        tags["dataset_version"] = outputs["validate"].dataset_version
    if "train" in outputs:
        for record in read_json(outputs["train"].history_path):
            epoch = int(record.pop("epoch"))
            record["epoch_seconds"] = record.pop("seconds")
            metrics += [(key, value, epoch) for key, value in _flat(record, numbers=True).items()]
    if report := outputs.get("report"):
        metrics += [(key, value, 0) for key, value in _flat(read_json(report.metrics_path), numbers=True).items()]
        tags["run_name"] = report.run_name
    if (promotion := outputs.get("promote")) and promotion.promoted:
        tags["registry_version"] = read_json(promotion.decision_path).get("champion_version")
    if promotion:
        tags["promotion"] = promotion.summary
    _log(client, run_id, params, metrics, tags)
    if report:
        client.log_artifacts(run_id, str(report.directory))


def _log_monitor(champion, result, flow_run, client, experiment) -> None:
    tags = {"kind": "monitor", "registry_version": champion.name}
    tags |= {"dataset_version": champion.dataset_version, "verdict": result.verdict}
    summary = result.to_json()
    numbers = {"images": result.images, "reference_images": result.reference_images, "drift": result.drift}
    numbers |= {"signals": summary["signals"]}
    with _mlflow_run(client, experiment, f"monitor-{Path(result.report).name}", tags, flow_run) as run_id:
        _log(client, run_id, {"window": result.window}, [(k, v, 0) for k, v in _flat(numbers, numbers=True).items()])
        client.log_artifacts(run_id, result.report)


def _log(client: Any, run_id: str, params: dict, metrics: list[tuple[str, float, int]], tags: dict | None = None):
    """Params (flattened, values cut to MLflow's limit), tags, metrics (key, value, step), in MLflow's batch sizes."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    params = [Param(key, str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in _flat(params).items()]
    tags = [RunTag(key, value) for key, value in _tags(tags or {}).items()]
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, value, step in metrics]
    for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=params[start : start + MAX_PARAMS_TAGS_PER_BATCH])
    client.log_batch(run_id, tags=tags)  # fewer than MAX_PARAMS_TAGS_PER_BATCH
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])


def _tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """The tags that have a value, as text cut to MLflow's limit."""
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    return {key: str(value)[:MAX_TAG_VAL_LENGTH] for key, value in tags.items() if value not in (None, "")}


def _flat(tree: Mapping[str, Any], numbers: bool = False, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level, keys joined by "." and made valid MLflow keys. `numbers`: only the numbers
    (booleans as 0/1, lists left out), for metrics; else every value but None, for params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = prefix + re.sub(r"[^\w\-. :]+", "_", str(key))
        if isinstance(value, Mapping):
            flat |= _flat(value, numbers, name + ".")
        elif isinstance(value, int | float) if numbers else value is not None:
            flat[name[:250]] = float(value) if numbers else value
    return flat
