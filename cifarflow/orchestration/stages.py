"""The pipeline's stages as data, the one declaration of the stage graph: for each, which stages it
reads (`upstream`), what else its task receives (`given`), what its cache key is made of and where
its output lives. The runner feeds each task exactly these inputs, and `runner.stage_task` refuses a
task whose parameters differ.

Every stage output derives from one base (`cifarflow.outputs.StageOutput`): where it lives and its
content fingerprint. Downstream keys are built from fingerprints, and `find` says whether the output for a
key is on disk and still whole (sha256-verified), which is how a run reuses it.
"""

from __future__ import annotations

from typing import Any

from cifarflow.calibration.calibrate import find_calibration
from cifarflow.config import PipelineConfig
from cifarflow.data.archive import is_url, local_path
from cifarflow.data.dataset_versions import DatasetVersion, current_version
from cifarflow.data.ingest import find_shards
from cifarflow.data.transform import find_features
from cifarflow.evaluation.evaluate import find_evaluation
from cifarflow.orchestration.cache import StageSpec, source_identity
from cifarflow.promotion.champions import baseline_id
from cifarflow.promotion.outcome import find_promotion
from cifarflow.reporting.report import find_report
from cifarflow.robustness.robustness import find_robustness
from cifarflow.training.run import checkpoint_dir, find_model
from cifarflow.training.warm_start import WarmStartPlan, plan_warm_start
from cifarflow.validation.validate import find_validation

TF_LIBS = ("tensorflow-cpu", "tensorflow", "keras")
DATA_CODE = ("cifarflow.data", "cifarflow.files")
MODEL_CODE = (*DATA_CODE, "cifarflow.models", "cifarflow.training")


def dataset_version(config: PipelineConfig, upstream: dict[str, Any]) -> DatasetVersion:
    """The dataset version on disk now: the ingested shards plus every added batch."""
    return current_version(config.layout)


def warm_start_plan(config: PipelineConfig, upstream: dict[str, Any]) -> WarmStartPlan:
    """A warm start depends on the champion it starts from (or why none can serve); a champion that
    cannot serve this run does not re-key it when it changes. Its code is training's, in the key."""
    features = upstream["preprocess"]
    return plan_warm_start(
        config.warm_start == "champion",
        config.layout.registry,
        config.model,
        features.normalization.kind,
        features.batch_ids,
    )


def report_inputs(config: PipelineConfig, upstream: dict[str, Any]) -> dict[str, str]:
    """The data source the report names: a URL as given; a local archive by its absolute path, or by
    its path in the data dir when it lies there (a moved data dir keeps its report)."""
    if is_url(config.source) and not config.source.startswith("file:"):
        return {"source": config.source}
    path, root = local_path(config.source).resolve(), config.layout.root
    return {"source": f"<data dir>/{path.relative_to(root)}" if path.is_relative_to(root) else str(path)}


def promote_inputs(config: PipelineConfig, upstream: dict[str, Any]) -> dict[str, str]:
    """The champion the challenger is judged against. (The report the decision is written into is
    upstream: its fingerprint covers its run name; no path enters a key, so a data dir can move.)"""
    return {"baseline": baseline_id(config.layout.registry, upstream["train"].model_sha256)}


SPECS: dict[str, StageSpec] = {
    "ingest": StageSpec(
        "ingest",
        params=("sha256", "md5", "rows_per_shard"),
        inputs=source_identity,
        code=DATA_CODE,
        libraries=("pyarrow", "numpy"),
        find=lambda config, key, upstream: find_shards(config.layout, key),
    ),
    "validate": StageSpec(
        "validate",
        params=(),
        code=(*DATA_CODE, "cifarflow.validation", "cifarflow.markdown"),
        libraries=("pyarrow", "numpy"),
        upstream=("ingest",),
        given=(("dataset_version", dataset_version),),
        find=lambda config, key, inputs: find_validation(
            config.layout.validation_dir(key), inputs["dataset_version"].version
        ),
    ),
    "preprocess": StageSpec(
        "preprocess",
        params=("resolved_normalization",),
        code=DATA_CODE,
        libraries=("numpy",),
        upstream=("validate",),
        find=lambda config, key, upstream: find_features(config.layout.feature_dir(key)),
    ),
    "train": StageSpec(
        "train",
        params=("model", "train_epochs", "train_batch_size", "train_learning_rate", "seed", "warm_start"),
        code=MODEL_CODE,
        libraries=(*TF_LIBS, "numpy"),
        upstream=("preprocess",),
        given=(("warm_start_from", warm_start_plan),),
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
    "calibrate": StageSpec(
        "calibrate",
        params=(),
        code=(*DATA_CODE, "cifarflow.calibration", "cifarflow.evaluation"),
        libraries=("numpy", "scipy", "matplotlib"),
        upstream=("preprocess", "evaluate"),
        find=lambda config, key, upstream: find_calibration(config.layout.calibration_dir(key)),
    ),
    "robustness": StageSpec(
        "robustness",
        params=("model",),
        code=(*MODEL_CODE, "cifarflow.robustness", "cifarflow.calibration", "cifarflow.evaluation"),
        libraries=(*TF_LIBS, "numpy", "pillow"),
        upstream=("preprocess", "train", "evaluate", "calibrate"),
        find=lambda config, key, upstream: find_robustness(config.layout.robustness_dir(key)),
    ),
    "report": StageSpec(
        "report",
        params=("model", "train_batch_size", "train_learning_rate", "seed"),
        inputs=report_inputs,
        code=("cifarflow.reporting", "cifarflow.files", "cifarflow.markdown"),
        libraries=(),
        upstream=("ingest", "validate", "preprocess", "train", "evaluate", "calibrate", "robustness"),
        find=lambda config, key, upstream: find_report(config.layout.reports, key),
    ),
    "promote": StageSpec(
        "promote",
        params=("promotion_alpha", "resolved_min_accuracy"),
        inputs=promote_inputs,
        code=(
            *MODEL_CODE,
            "cifarflow.promotion",
            "cifarflow.evaluation",
            "cifarflow.registry",
            "cifarflow.calibration",
        ),
        libraries=("scipy", *TF_LIBS),
        upstream=("validate", "preprocess", "train", "evaluate", "calibrate", "report"),
        find=lambda config, key, upstream: find_promotion(upstream["report"].directory, key, config.layout.registry),
    ),
}
STAGES = tuple(SPECS)


def downstream(stage: str) -> tuple[str, ...]:
    """`stage` and every stage that reads its output, directly or not, in pipeline order: what a
    change to its output reruns."""
    reached = {stage}
    for name in STAGES:
        if reached & set(SPECS[name].upstream):
            reached.add(name)
    return tuple(name for name in STAGES if name in reached)
