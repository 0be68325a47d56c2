"""The pipeline's stages as data: for each, what its cache key is made of and where its output lives.

Every stage output shares one small protocol (`StageOutput`): where it lives and its content
fingerprint. Downstream keys are built from fingerprints, and `find` says whether the output for a
key is on disk and still whole (sha256-verified), which is how a run reuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from cifarflow.config import PipelineConfig
from cifarflow.data.ingest import find_shards
from cifarflow.data.transform import find_features
from cifarflow.evaluation.evaluate import find_evaluation
from cifarflow.orchestration.cache import StageSpec, source_identity
from cifarflow.promotion.champions import baseline_id
from cifarflow.promotion.outcome import find_promotion
from cifarflow.reporting.report import find_report
from cifarflow.training.run import checkpoint_dir, find_model


class StageOutput(Protocol):
    @property
    def location(self) -> Path: ...

    @property
    def fingerprint(self) -> str: ...


TF_LIBS = ("tensorflow-cpu", "tensorflow", "keras")
DATA_CODE = ("cifarflow.data", "cifarflow.files")
MODEL_CODE = (*DATA_CODE, "cifarflow.models", "cifarflow.training")


def promote_inputs(config: PipelineConfig, upstream: dict[str, Any]) -> dict[str, str]:
    """The champion the challenger is judged against, and the report the decision is written into."""
    return {
        "baseline": baseline_id(config.layout.registry, upstream["train"].model_sha256),
        "report_dir": str(upstream["report"].directory),
    }


SPECS: dict[str, StageSpec] = {
    "ingest": StageSpec(
        "ingest",
        params=("sha256", "md5", "rows_per_shard"),
        inputs=source_identity,
        code=DATA_CODE,
        libraries=("pyarrow", "numpy"),
        find=lambda config, key, upstream: find_shards(config.layout, key),
    ),
    "preprocess": StageSpec(
        "preprocess",
        params=("resolved_normalization",),
        code=DATA_CODE,
        libraries=("numpy",),
        upstream=("ingest",),
        find=lambda config, key, upstream: find_features(config.layout.feature_dir(key)),
    ),
    "train": StageSpec(
        "train",
        params=("model", "train_epochs", "train_batch_size", "train_learning_rate", "seed"),
        code=MODEL_CODE,
        libraries=(*TF_LIBS, "numpy"),
        upstream=("preprocess",),
        find=lambda config, key, upstream: find_model(config.layout.model_dir(key)),
        scratch=lambda config, key: checkpoint_dir(config.layout.model_dir(key)),
    ),
    "evaluate": StageSpec(
        "evaluate",
        params=("model",),
        code=(*MODEL_CODE, "cifarflow.evaluation"),
        libraries=(*TF_LIBS, "scikit-learn", "matplotlib"),
        upstream=("preprocess", "train"),
        find=lambda config, key, upstream: find_evaluation(config.layout.evaluation_dir(key)),
    ),
    "report": StageSpec(
        "report",
        params=("source", "model", "train_batch_size", "train_learning_rate", "seed"),
        code=("cifarflow.reporting", "cifarflow.files"),
        libraries=(),
        upstream=("ingest", "preprocess", "train", "evaluate"),
        find=lambda config, key, upstream: find_report(config.layout.reports, key),
    ),
    "promote": StageSpec(
        "promote",
        params=("promotion_alpha",),
        inputs=promote_inputs,
        code=(*DATA_CODE, "cifarflow.promotion", "cifarflow.evaluation"),
        libraries=("scipy",),
        upstream=("ingest", "preprocess", "train", "evaluate", "report"),
        find=lambda config, key, upstream: find_promotion(upstream["report"].directory, key, config.layout.registry),
    ),
}
STAGES = tuple(SPECS)
