from __future__ import annotations

from prefect import get_run_logger

from cifarflow.calibration.calibrate import Calibration, calibrate_model
from cifarflow.config import PipelineConfig
from cifarflow.data.transform import Features
from cifarflow.evaluation.evaluate import Evaluation
from cifarflow.orchestration.runner import stage_task


@stage_task("calibrate", retries=1, delay=1, task_run_name="calibrate-{config.model}")
def calibrate(config: PipelineConfig, key: str, preprocess: Features, evaluate: Evaluation) -> Calibration:
    """Temperature scaling: the temperature that becomes part of the model, and ECE/NLL/Brier before and after."""
    return calibrate_model(
        evaluate.directory, preprocess.directory, config.layout.calibration_dir(key), log=get_run_logger().info
    )
