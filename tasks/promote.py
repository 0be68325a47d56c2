from __future__ import annotations

from prefect import get_run_logger

from cifarflow.calibration.calibrate import Calibration
from cifarflow.config import PipelineConfig
from cifarflow.data.transform import Features
from cifarflow.evaluation.evaluate import Evaluation
from cifarflow.orchestration.events import announce_moves
from cifarflow.orchestration.runner import stage_task
from cifarflow.paths import printable
from cifarflow.promotion.outcome import Promotion
from cifarflow.promotion.promote import canary_set, challenger_score, promote_challenger
from cifarflow.reporting.report import Report
from cifarflow.training.run import TrainResult
from cifarflow.validation.validate import ValidatedData


@stage_task("promote", retries=1, delay=2, task_run_name="promote-{config.model}")
def promote(
    config: PipelineConfig,
    key: str,
    validate: ValidatedData,
    preprocess: Features,
    train: TrainResult,
    evaluate: Evaluation,
    calibrate: Calibration,
    report: Report,
) -> Promotion:
    """Champion/challenger: this run's model becomes the registry's next version if it is significantly
    better (McNemar's test) and its export (temperature traced in) passes the smoke test; a promotion emits
    `cifar10.model.promoted`."""
    challenger = challenger_score(evaluate.directory, preprocess, train, report, config.model, validate.dataset_version)
    outcome = promote_challenger(
        challenger,
        train.model_path,
        report,
        config.layout.registry,
        config.promotion_alpha,
        key,
        canary_set(calibrate.probabilities_path, preprocess.directory),
        get_run_logger().info,
        min_accuracy=config.promotion_floor(preprocess.label_names, preprocess.image_size),
        temperature=calibrate.temperature,
    )
    announce_moves(printable(config.layout.root), config.layout.registry, moved=outcome.promoted)
    return outcome
