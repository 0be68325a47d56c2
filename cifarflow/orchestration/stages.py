"""The pipeline's stages as data, the one declaration of the stage graph: what each reads (`upstream`,
`given`), what its key is made of and where its output lives (`writes`; `find` reads it back)."""

from __future__ import annotations

from typing import Any

from cifarflow.calibration.calibrate import find_calibration
from cifarflow.config import PipelineConfig
from cifarflow.data.archive import is_remote, local_path
from cifarflow.data.dataset_versions import current_version
from cifarflow.data.ingest import find_shards
from cifarflow.data.transform import find_features
from cifarflow.evaluation.evaluate import find_evaluation
from cifarflow.orchestration.cache import StageSpec, source_identity
from cifarflow.promotion.outcome import baseline_id, find_promotion
from cifarflow.reporting.report import find_report
from cifarflow.robustness.robustness import find_robustness
from cifarflow.training.run import checkpoint_dir, find_model
from cifarflow.training.warm_start import WarmStartPlan, plan_warm_start
from cifarflow.validation.validate import find_validation

TF_LIBS = ("tensorflow-cpu", "tensorflow", "keras")
DATA_CODE = ("cifarflow.data", "cifarflow.files", "cifarflow.intake.images", "cifarflow.paths")
MODEL_CODE = (*DATA_CODE, "cifarflow.models", "cifarflow.training")
EVALUATION_CODE = ("cifarflow.evaluation", "cifarflow.calibration")


def warm_start_plan(config: PipelineConfig, upstream: dict[str, Any]) -> WarmStartPlan:
    """The champion a warm start starts from, or why none can serve (then a new champion does not re-key)."""
    return plan_warm_start(
        config.warm_start == "champion", config.layout.registry, config.model, upstream["preprocess"]
    )


def report_inputs(config: PipelineConfig, upstream: dict[str, Any]) -> dict[str, str]:
    """The source the report names: a URL, a path in the data dir (a moved data dir keeps its report), else absolute."""
    if is_remote(config.source):
        return {"source": config.source}
    path, root = local_path(config.source).resolve(), config.layout.root
    return {"source": f"<data dir>/{path.relative_to(root)}" if path.is_relative_to(root) else str(path)}


def promote_inputs(config: PipelineConfig, upstream: dict[str, Any]) -> dict[str, str]:
    """The champion the challenger is judged against (no path enters a key, so a data dir can move)."""
    return {"baseline": baseline_id(config.layout.registry, upstream["train"].model_sha256)}


SPECS: dict[str, StageSpec] = {
    "ingest": StageSpec(
        "ingest",
        params=("sha256", "md5", "rows_per_shard", "image_size", "test_fraction", "split_seed"),
        inputs=source_identity,
        code=DATA_CODE,
        libraries=("pyarrow", "numpy"),
        find=lambda config, key, upstream: find_shards(config.layout, key),
        writes="parquet/manifest.json",
    ),
    "validate": StageSpec(
        "validate",
        code=(*DATA_CODE, "cifarflow.validation", "cifarflow.markdown"),
        libraries=("pyarrow", "numpy"),
        upstream=("ingest",),
        given=(("dataset_version", lambda config, upstream: current_version(config.layout)),),  # shards + batches
        find=lambda config, key, inputs: find_validation(
            config.layout.validation_dir(key), inputs["dataset_version"].version
        ),
        writes="validations/<key>/",
    ),
    "preprocess": StageSpec(
        "preprocess",
        params=("resolved_normalization",),
        code=DATA_CODE,
        libraries=("numpy",),
        upstream=("validate",),
        find=lambda config, key, upstream: find_features(config.layout.feature_dir(key)),
        writes="features/<key>/",
    ),
    "train": StageSpec(
        "train",
        params=("model", "train_epochs", "train_batch_size", "train_learning_rate", "seed", "warm_start"),
        code=MODEL_CODE,
        libraries=(*TF_LIBS, "numpy"),
        upstream=("preprocess",),
        given=(("warm_start_from", warm_start_plan),),
        find=lambda config, key, upstream: find_model(config.layout.model_dir(key)),
        writes="models/<key>/",
        scratch=lambda config, key: checkpoint_dir(config.layout.model_dir(key)),
    ),
    "evaluate": StageSpec(
        "evaluate",
        params=("model",),
        code=(*MODEL_CODE, *EVALUATION_CODE),
        libraries=(*TF_LIBS, "scikit-learn", "matplotlib"),
        upstream=("preprocess", "train"),
        find=lambda config, key, upstream: find_evaluation(config.layout.evaluation_dir(key)),
        writes="evaluations/<key>/",
    ),
    # --8<-- [start:calibrate-spec]
    "calibrate": StageSpec(
        "calibrate",
        code=(*DATA_CODE, *EVALUATION_CODE),
        libraries=("numpy", "scipy", "matplotlib"),
        upstream=("preprocess", "evaluate"),
        find=lambda config, key, upstream: find_calibration(config.layout.calibration_dir(key)),
        writes="calibrations/<key>/",
    ),
    # --8<-- [end:calibrate-spec]
    "robustness": StageSpec(
        "robustness",
        params=("model",),
        code=(*MODEL_CODE, *EVALUATION_CODE, "cifarflow.robustness"),
        libraries=(*TF_LIBS, "numpy", "pillow"),
        upstream=("preprocess", "train", "evaluate", "calibrate"),
        find=lambda config, key, upstream: find_robustness(config.layout.robustness_dir(key)),
        writes="robustness/<key>/",
    ),
    "report": StageSpec(
        "report",
        params=("model", "train_batch_size", "train_learning_rate", "seed"),
        inputs=report_inputs,
        code=("cifarflow.reporting", *DATA_CODE, "cifarflow.markdown"),
        upstream=("ingest", "validate", "preprocess", "train", "evaluate", "calibrate", "robustness"),
        find=lambda config, key, upstream: find_report(config.layout.reports, key),
        writes="reports/<run-name>/",
    ),
    "promote": StageSpec(
        "promote",
        params=("promotion_alpha", "min_accuracy"),
        inputs=promote_inputs,
        code=(
            *MODEL_CODE,
            *EVALUATION_CODE,
            "cifarflow.promotion",
            "cifarflow.registry",
            "cifarflow.reporting",
            "cifarflow.markdown",
        ),
        libraries=("scipy", "pyyaml", "tf2onnx", "onnx", "onnxruntime", *TF_LIBS),
        upstream=("validate", "preprocess", "train", "evaluate", "calibrate", "report"),
        find=lambda config, key, upstream: find_promotion(upstream["report"].directory, key, config.layout.registry),
        writes="reports/<run-name>/promotion.json",
    ),
}
STAGES = tuple(SPECS)
