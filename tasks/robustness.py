from __future__ import annotations

from prefect import get_run_logger

from cifarflow.calibration.calibrate import Calibration
from cifarflow.config import PipelineConfig
from cifarflow.data.transform import Features
from cifarflow.evaluation.evaluate import Evaluation
from cifarflow.orchestration.runner import stage_task
from cifarflow.robustness.robustness import Robustness, measure_robustness
from cifarflow.training.run import TrainResult


@stage_task("robustness", retries=1, delay=2, task_run_name="robustness-{config.model}")
def robustness(
    config: PipelineConfig,
    key: str,
    preprocess: Features,
    train: TrainResult,
    evaluate: Evaluation,
    calibrate: Calibration,
) -> Robustness:
    """Accuracy under six corruptions at three severities each, on a fixed test subset."""
    return measure_robustness(
        train.model_path,
        config.model,
        preprocess.directory,
        evaluate.directory / "probabilities.npy",
        calibrate.half_temperatures,
        config.layout.robustness_dir(key),
        log=get_run_logger().info,
    )
