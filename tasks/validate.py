from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from cifarflow.config import PipelineConfig
from cifarflow.data.dataset_versions import DatasetVersion
from cifarflow.data.ingest import IngestResult
from cifarflow.orchestration.runner import stage_task
from cifarflow.validation.validate import ValidatedData, validate_dataset


@stage_task("validate", retries=1, delay=1, task_run_name="validate")
def validate(config: PipelineConfig, key: str, ingest: IngestResult, dataset_version: DatasetVersion) -> ValidatedData:
    """Check the dataset version (shards + added batches): problems fail the run, warnings go to log and UI."""
    logger = get_run_logger()
    version = dataset_version
    logger.info(
        "dataset version %s: %d training images (%d added batches), %d classes at %d×%d",
        version.version,
        version.train_images,
        len(version.batches),
        len(version.label_names),
        version.image_size,
        version.image_size,
    )
    result = validate_dataset(config.layout, version, config.layout.validation_dir(key), log=logger.info)
    for warning in result.warnings:
        logger.warning(warning)
    create_markdown_artifact(
        markdown=(result.directory / "validation.md").read_text(),
        key="cifar10-data-validation",
        description=f"dataset {result.dataset_version}: {len(result.warnings)} warnings",
    )
    return result
