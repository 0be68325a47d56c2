from __future__ import annotations

from prefect import get_run_logger

from cifarflow.calibration.calibrate import Calibration
from cifarflow.config import PipelineConfig
from cifarflow.data.ingest import IngestResult
from cifarflow.data.transform import Features
from cifarflow.evaluation.evaluate import Evaluation
from cifarflow.orchestration.runner import stage_task
from cifarflow.reporting.report import Report, model_card, run_name_for, write_report
from cifarflow.robustness.robustness import Robustness
from cifarflow.training.run import TrainResult
from cifarflow.validation.validate import ValidatedData


@stage_task("report", retries=2, delay=1, task_run_name="report-{config.model}")
def report(
    config: PipelineConfig,
    key: str,
    ingest: IngestResult,
    validate: ValidatedData,
    preprocess: Features,
    train: TrainResult,
    evaluate: Evaluation,
    calibrate: Calibration,
    robustness: Robustness,
) -> Report:
    """Write data/reports/<run-name>/ (report.md, metrics.json, plots, model card) and `latest`."""
    name = run_name_for(config.model, train.epochs, key)
    card = model_card(run_name=name, config=config, train=train, ingest=ingest, dataset=validate, features=preprocess)
    card |= {"cache_key": key}
    data_section = (validate.directory / "validation.md").read_text()
    result = write_report(
        evaluate.directory, calibrate.directory, robustness.directory, card, config.layout.reports, data_section
    )
    get_run_logger().info("report written to %s", result.directory)
    return result
