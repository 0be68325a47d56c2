from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from cifarflow.config import PipelineConfig
from cifarflow.data.transform import Features
from cifarflow.orchestration.runner import stage_task
from cifarflow.training.run import TrainResult, TrainSettings, train_model
from cifarflow.training.warm_start import WarmStartPlan


@stage_task("train", retries=1, delay=5, task_run_name="train-{config.model}-e{config.train_epochs}")
def train(config: PipelineConfig, key: str, preprocess: Features, warm_start_from: WarmStartPlan) -> TrainResult:
    """Train the preset (from `warm_start_from`'s weights, if any); each epoch logged and in a UI progress bar."""
    logger = get_run_logger()
    settings = TrainSettings(
        config.model,
        config.train_epochs,
        config.train_batch_size,
        config.train_learning_rate,
        config.seed,
        warm_start_from.model_path,
    )
    progress = create_progress_artifact(
        progress=0.0, key=f"training-progress-{config.model}", description=f"Training {config.model}"
    )

    def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in {"epoch", "seconds"})
        logger.info("epoch %d/%d: %s (%.1f s)", epoch, total, shown, metrics["seconds"])
        update_progress_artifact(progress, progress=100.0 * epoch / total)

    logger.info("training %s: %s", config.model, settings)
    result = train_model(
        settings, preprocess.directory, config.layout.model_dir(key), on_epoch=on_epoch, warm_start=warm_start_from.note
    )
    if result.warm_start:
        logger.info("warm start: %s", result.warm_start)
    logger.info("trained %s in %.1f s (%d parameters)", config.model, result.train_seconds, result.params)
    return result
