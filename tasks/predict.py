"""Tasks of the batch-prediction flow (flows/predict_flow.py): find the files, score them, publish."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from cifarflow.inference.batch import BatchResult, predict_files
from cifarflow.inference.predictor import load_predictor
from cifarflow.inference.progress import ProgressLog
from cifarflow.inference.sources import select_files
from cifarflow.monitoring.log import PredictionLog
from cifarflow.orchestration.artifacts import publish_predictions
from cifarflow.paths import from_printable, printable

SKIPPED_LOGGED = 100  # files in the folders that are not scored, each logged with its reason


@task(name="find-images", cache_policy=NO_CACHE)
def find_images(paths: list[str]) -> list[Path]:
    """PATH arguments → the files to score; files in the folders not scored are logged with the reason."""
    logger = get_run_logger()
    selection = select_files([from_printable(path) for path in paths], allow_empty=True)  # printable: see paths
    logger.info("%d files to score in %s", len(selection.files), printable(", ".join(paths)))
    for path, reason in selection.skipped[:SKIPPED_LOGGED]:
        logger.info("not scored: %s: %s", path, reason)
    if len(selection.skipped) > SKIPPED_LOGGED:
        logger.info("… and %d more files not scored", len(selection.skipped) - SKIPPED_LOGGED)
    return selection.files


@task(name="score-images", cache_policy=NO_CACHE)  # the folder's contents and the champion change between runs
def score_images(
    files: list[Path], model: str, registry: Path, out: Path, batch_size: int, prediction_log: Path | None
) -> BatchResult:
    """Score every file with `model` into `out` and a contact sheet, logging to `prediction_log` (None: no log)."""
    logger = get_run_logger()
    predictor = load_predictor(model, registry)
    logger.info("model %s (%s)", predictor.version, predictor.preset)
    artifact = create_progress_artifact(progress=0.0, key="cifar10-predictions-progress", description="Scoring images")
    log_progress = ProgressLog(logger.info)

    def on_progress(done: int, total: int, failed: int) -> None:
        if log_progress(done, total, failed):  # an API call per batch would cost more than small batches take
            update_progress_artifact(artifact, 100 * done / total)

    with PredictionLog(prediction_log, logger.warning) if prediction_log else nullcontext() as log:  # close: commit
        result = predict_files(files, predictor, out, out.with_suffix(".png"), batch_size, on_progress, log)
    publish_predictions(result)  # a summary with the contact sheet, and a table
    return result
