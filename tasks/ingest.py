from __future__ import annotations

from prefect import get_run_logger

from cifarflow.config import PipelineConfig
from cifarflow.data.ingest import IngestResult, ingest_archive
from cifarflow.orchestration.runner import stage_task


@stage_task("ingest", retries=3, delay=2, task_run_name="ingest")
def ingest(config: PipelineConfig, key: str) -> IngestResult:
    """Fetch (download or read) and verify the archive; write Parquet shards + manifest."""
    logger = get_run_logger()
    result = ingest_archive(
        config.source,
        config.layout,
        sha256=config.sha256,
        md5=config.md5,
        rows_per_shard=config.rows_per_shard,
        cache_key=key,
        log=logger.info,
    )
    logger.info("ingested %d images (train %d, test %d)", sum(result.rows.values()), *result.rows.values())
    return result
