from __future__ import annotations

from prefect import get_run_logger

from cifarflow.config import PipelineConfig
from cifarflow.data.transform import Features, build_features
from cifarflow.orchestration.runner import stage_task
from cifarflow.validation.validate import ValidatedData


@stage_task("preprocess", retries=2, delay=1, task_run_name="preprocess-{config.resolved_normalization}")
def preprocess(config: PipelineConfig, key: str, validate: ValidatedData) -> Features:
    """Fit the normalization on the training split, one-hot encode the labels, write training-ready arrays."""
    return build_features(
        validate.dataset_path,
        config.layout.shard_manifest,
        config.layout.feature_dir(key),
        config.resolved_normalization,
        log=get_run_logger().info,
    )
