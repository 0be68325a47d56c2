"""The pipeline's stages as Prefect tasks: thin wrappers that add caching, retries, logging
and progress to the plain functions in `tasks.ingest`, `tasks.preprocess`, `tasks.train`,
`tasks.evaluate` and `tasks.report`.

Each stage's output lives at a place derived from its cache key and is checked before reuse,
so the task body itself skips work whose output is already valid: Prefect's cache record
makes the run show as `Cached`; the on-disk check keeps a deleted or corrupted output from
ever being handed downstream.
"""

from __future__ import annotations

import shutil
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.tasks import exponential_backoff

from tasks.cache import StageCachePolicy, StageSpec, key_parts, record_stage
from tasks.config import PipelineConfig
from tasks.errors import PipelineInputError, ShardError
from tasks.evaluate import Evaluation
from tasks.files import file_digest, read_json
from tasks.ingest import IngestResult, ingest_archive
from tasks.preprocess import Features, build_features, verify_features
from tasks.report import Report
from tasks.shards import SPLITS, verify_manifest
from tasks.train import TrainResult, TrainSettings, checkpoint_dir, load_train_result

TF_LIBS = ("tensorflow-cpu", "tensorflow", "keras")
SPECS: dict[str, StageSpec] = {
    "ingest": StageSpec(
        "ingest",
        ("source_identity", "sha256", "md5", "rows_per_shard"),
        ("tasks.archive", "tasks.shards", "tasks.ingest", "tasks.files"),
        ("pyarrow", "numpy"),
    ),
    "preprocess": StageSpec(
        "preprocess",
        ("normalization",),
        ("tasks.preprocess", "tasks.shards", "tasks.files"),
        ("numpy",),
        upstream=("ingest",),
    ),
    "train": StageSpec(
        "train",
        ("model", "train_epochs", "train_batch_size", "train_learning_rate", "seed"),
        (
            "tasks.train",
            "tasks.fit",
            "tasks.models",
            "tasks.presets",
            "tasks.airbench",
            "tasks.airbench_train",
            "tasks.muon",
            "tasks.augment",
        ),
        (*TF_LIBS, "numpy"),
        upstream=("preprocess",),
    ),
    "evaluate": StageSpec(
        "evaluate",
        ("model",),
        ("tasks.evaluate", "tasks.plots", "tasks.airbench", "tasks.augment"),
        (*TF_LIBS, "scikit-learn", "matplotlib"),
        upstream=("preprocess", "train"),
    ),
    "report": StageSpec(
        "report",
        ("source", "model", "train_batch_size", "train_learning_rate", "seed"),
        ("tasks.report",),
        (),
        upstream=("ingest", "preprocess", "train", "evaluate"),
    ),
}
STAGES = tuple(SPECS)


def stage_key(stage: str, config: PipelineConfig, upstream: dict[str, Any]) -> str:
    return key_parts(SPECS[stage], config, upstream).key


def _is_transient(task, task_run, state) -> bool:
    """Retry only what may succeed next time: not a bad archive, parameter or missing input."""
    return not isinstance(state.data, PipelineInputError)


def _options(stage: str, retries: int, delay: float) -> dict[str, Any]:
    return {
        "name": stage,
        "cache_policy": StageCachePolicy(spec=SPECS[stage]),
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=delay),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": _is_transient,
        "persist_result": True,
    }


# ---------- where each stage's output for a key lives, and whether it is still whole ----------


def existing_ingest(config: PipelineConfig, key: str) -> IngestResult | None:
    layout = config.layout
    try:
        if read_json(layout.shard_manifest).get("cache_key") != key:
            return None  # the shards on disk were made from another source, parameters or code
        manifest = verify_manifest(layout.shard_manifest)
    except (ShardError, OSError, ValueError):
        return None
    return IngestResult(
        layout.shard_manifest,
        manifest["dataset_sha256"],
        manifest["source"]["sha256"],
        {s: manifest["splits"][s]["rows"] for s in SPLITS},
        rewritten=False,
    )


def existing_features(config: PipelineConfig, key: str) -> Features | None:
    directory = config.layout.feature_dir(key)
    try:
        meta = verify_features(directory)
    except (ShardError, OSError, ValueError):
        return None
    return Features(directory, meta["features_sha256"], meta["label_names"], meta["normalization"])


def existing_model(config: PipelineConfig, key: str) -> TrainResult | None:
    directory = config.layout.model_dir(key)
    try:
        result = load_train_result(directory)
    except (OSError, ValueError, KeyError):
        return None
    if not result.model_path.is_file() or file_digest(result.model_path) != result.model_sha256:
        return None
    return result


def existing_evaluation(config: PipelineConfig, key: str) -> Evaluation | None:
    directory = config.layout.evaluation_dir(key)
    metrics = directory / "metrics.json"
    if not metrics.is_file():
        return None
    try:
        return Evaluation(directory, metrics, file_digest(metrics), read_json(metrics)["test_accuracy"])
    except (OSError, ValueError, KeyError):
        return None


def existing_report(config: PipelineConfig, key: str) -> Report | None:
    for card_path in sorted(config.layout.reports.glob("*/model_card.json"), reverse=True):
        try:
            card = read_json(card_path)
        except (OSError, ValueError):
            continue
        directory = card_path.parent
        if (
            card.get("cache_key") == key
            and (directory / "report.md").is_file()
            and (directory / "metrics.json").is_file()
        ):
            return Report(directory, directory / "report.md", directory / "metrics.json", card["run_name"])
    return None


EXISTING = {
    "ingest": existing_ingest,
    "preprocess": existing_features,
    "train": existing_model,
    "evaluate": existing_evaluation,
    "report": existing_report,
}


def existing_output(stage: str, config: PipelineConfig, key: str):
    return EXISTING[stage](config, key)


# ------------------------------------- the tasks -------------------------------------------


@task(**_options("ingest", retries=3, delay=2), task_run_name="ingest")
def ingest(config: PipelineConfig, force: bool = False) -> IngestResult:
    """Fetch (download or read) and verify the archive; write Parquet shards + manifest."""
    logger = get_run_logger()
    key = stage_key("ingest", config, {})
    if not force and (found := existing_ingest(config, key)):
        logger.info("shards already current for this source; reusing %s", found.manifest_path)
        return found
    result = ingest_archive(
        config.source,
        config.layout,
        sha256=config.sha256,
        md5=config.md5,
        rows_per_shard=config.rows_per_shard,
        cache_key=key,
        log=logger.info,
    )
    logger.info(
        "ingested %s images (train %d, test %d)", sum(result.rows.values()), result.rows["train"], result.rows["test"]
    )
    return result


@task(**_options("preprocess", retries=2, delay=1), task_run_name="preprocess-{config.normalization}")
def preprocess(config: PipelineConfig, ingest: IngestResult, force: bool = False) -> Features:
    """Normalize pixels and one-hot encode labels into memory-mappable arrays."""
    logger = get_run_logger()
    key = stage_key("preprocess", config, {"ingest": ingest})
    if not force and (found := existing_features(config, key)):
        logger.info("features already built at %s", found.directory)
        return found
    return build_features(ingest.manifest_path, config.layout.feature_dir(key), config.normalization, log=logger.info)


@task(**_options("train", retries=1, delay=5), task_run_name="train-{config.model}-e{config.train_epochs}")
def train(config: PipelineConfig, preprocess: Features, force: bool = False) -> TrainResult:
    """Train the chosen model; logs every epoch and updates a progress artifact in the UI."""
    from tasks.train import train_model

    logger = get_run_logger()
    key = stage_key("train", config, {"preprocess": preprocess})
    if not force and (found := existing_model(config, key)):
        logger.info("model already trained at %s", found.model_dir)
        return found
    preset = config.preset
    settings = TrainSettings(
        model=config.model,
        epochs=config.train_epochs,
        batch_size=config.train_batch_size,
        learning_rate=config.train_learning_rate,
        optimizer=preset.optimizer,
        seed=config.seed,
        trainer=preset.trainer,
    )
    progress = create_progress_artifact(
        progress=0.0,
        key=f"training-progress-{config.model}",
        description=f"Training {config.model} for {settings.epochs} epochs",
    )

    def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in {"epoch", "seconds"})
        logger.info("epoch %d/%d: %s (%.1f s)", epoch, total, shown, metrics["seconds"])
        update_progress_artifact(progress, progress=100.0 * epoch / total)

    logger.info("training %s: %s", config.model, settings)
    if force:  # a forced re-train starts over rather than resuming an old checkpoint
        shutil.rmtree(checkpoint_dir(config.layout.model_dir(key)), ignore_errors=True)
    result = train_model(settings, preprocess.directory, config.layout.model_dir(key), on_epoch=on_epoch)
    logger.info("trained %s in %.1f s (%d parameters)", config.model, result.train_seconds, result.params)
    return result


@task(**_options("evaluate", retries=1, delay=2), task_run_name="evaluate-{config.model}")
def evaluate(config: PipelineConfig, preprocess: Features, train: TrainResult, force: bool = False) -> Evaluation:
    """Accuracy, classification report, confusion matrix and plots on the test split."""
    from tasks.evaluate import evaluate_model

    logger = get_run_logger()
    key = stage_key("evaluate", config, {"preprocess": preprocess, "train": train})
    if not force and (found := existing_evaluation(config, key)):
        logger.info("evaluation already at %s", found.directory)
        return found
    return evaluate_model(
        train.model_path,
        train.history_path,
        preprocess.directory,
        config.preset.trainer,
        config.layout.evaluation_dir(key),
        log=logger.info,
    )


@task(**_options("report", retries=2, delay=1), task_run_name="report-{config.model}")
def report(
    config: PipelineConfig,
    ingest: IngestResult,
    preprocess: Features,
    train: TrainResult,
    evaluate: Evaluation,
    force: bool = False,
) -> Report:
    """Write data/reports/<run-name>/ (report.md, metrics.json, plots, model card) and `latest`."""
    from tasks.report import model_card, run_name_for, write_report

    logger = get_run_logger()
    key = stage_key(
        "report", config, {"ingest": ingest, "preprocess": preprocess, "train": train, "evaluate": evaluate}
    )
    if not force and (found := existing_report(config, key)):
        logger.info("report already at %s", found.directory)
        return found
    card = model_card(
        run_name=run_name_for(config.model, train.epochs, key),
        config=config,
        train=train,
        ingest=ingest,
        features=preprocess,
    ) | {"cache_key": key}
    result = write_report(evaluate.directory, card, config.layout.reports)
    logger.info("report written to %s", result.directory)
    return result


TASKS = {"ingest": ingest, "preprocess": preprocess, "train": train, "evaluate": evaluate, "report": report}


def prepared_task(stage: str, config: PipelineConfig, upstream: dict[str, Any], force: bool = False, **options):
    """The stage's task for this configuration. Prefect's cache record is overridden (the stage runs
    again) when forced or when the output for the key is missing or no longer whole on disk."""
    refresh = force or existing_output(stage, config, stage_key(stage, config, upstream)) is None
    return TASKS[stage].with_options(refresh_cache=refresh, result_storage=config.layout.prefect_results, **options)


def run_stage(stage: str, config: PipelineConfig, upstream: dict[str, Any], force: bool = False):
    """Run (or reuse) one stage inside a flow and record its key for `--plan` and `--stages`."""
    result = prepared_task(stage, config, upstream, force)(config=config, force=force, **upstream)
    fingerprint = getattr(result, "fingerprint", None)
    record_stage(
        config.layout.stage_state,
        stage,
        key_parts(SPECS[stage], config, upstream),
        {"fingerprint": fingerprint} if fingerprint else {},
    )
    return result
