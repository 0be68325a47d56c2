from __future__ import annotations

from prefect import get_run_logger

from cifarflow.config import PipelineConfig
from cifarflow.data.transform import Features
from cifarflow.evaluation.evaluate import Evaluation, evaluate_model
from cifarflow.orchestration.runner import stage_task
from cifarflow.training.run import TrainResult


@stage_task("evaluate", retries=1, delay=2, task_run_name="evaluate-{config.model}")
def evaluate(config: PipelineConfig, key: str, preprocess: Features, train: TrainResult) -> Evaluation:
    """Accuracy, classification report, confusion matrix and plots on the test split."""
    return evaluate_model(
        train.model_path,
        train.history_path,
        preprocess.directory,
        config.model,
        config.layout.evaluation_dir(key),
        log=get_run_logger().info,
    )
