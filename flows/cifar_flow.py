"""The pipeline as one Prefect flow (`--plan` lists its stages and what each would do): CIFAR-10 by default, or your
own images from a folder of class folders (or a .tar.gz/.zip of one).

    python flows/cifar_flow.py --source data/cache/cifar-10-python.tar.gz    # default: --help says which
    python flows/cifar_flow.py --source ~/photos --image-size 64 --data-dir data-photos   # photos/<class>/*.jpg
    python flows/cifar_flow.py --model classic --epochs 20 --plan     # what would run, and why
    python flows/cifar_flow.py --stages evaluate,report,promote    # only these, reusing the rest

Runs against the Prefect server in PREFECT_API_URL, else on Prefect's temporary local server.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect and TensorFlow are imported

import argparse
import sys

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from cifarflow.cli import ArgumentParser, done, ensure_prefect_api, run_cli
from cifarflow.config import PipelineConfig, add_data_arguments, data_settings
from cifarflow.data.ingest import refuse_another_data_set
from cifarflow.files import ensure_writable
from cifarflow.lock import DEFAULT_LOCK_TIMEOUT_S, data_dir_lock
from cifarflow.models.presets import PRESETS
from cifarflow.orchestration.artifacts import publish_registry, publish_report
from cifarflow.orchestration.plan import plan_stages
from cifarflow.orchestration.runner import StageRunner, parse_stage_list
from cifarflow.orchestration.stages import STAGES
from cifarflow.tracking import tracked_pipeline
from tasks.calibrate import calibrate
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.preprocess import preprocess
from tasks.promote import promote
from tasks.report import report
from tasks.robustness import robustness
from tasks.train import train
from tasks.validate import validate

REUSED_HINT = (
    "the model was reused, not trained (its inputs have not changed: the stages show as Cached, nothing to watch); "
    'to train again, and watch it in the UI: --refresh train (make run ARGS="--refresh train"); every stage: --refresh'
)


def _run_name() -> str:
    config = flow_run.parameters.get("config") or {}
    config = config if isinstance(config, dict) else config.model_dump()
    model = config.get("model", "classic")
    epochs = config.get("epochs") or (PRESETS[model].epochs if model in PRESETS else None)
    return f"{model}-e{epochs}-{flow_run.scheduled_start_time.strftime('%Y%m%d-%H%M%S')}"


@flow(name="cifar10-pipeline", flow_run_name=_run_name, log_prints=True)
def cifar_pipeline(
    config: PipelineConfig = PipelineConfig(),
    stages: list[str] | None = None,
    refresh: list[str] | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> dict:
    """Every stage for `config`, or the `stages` selected (the others read from disk where needed);
    `refresh`: stages to recompute even when their output is on disk. Returns where each output lives."""
    logger = get_run_logger()
    ensure_writable(config.layout.root)
    run = StageRunner(config, parse_stage_list(stages, "stages"), parse_stage_list(refresh, "refresh"))
    with tracked_pipeline(config, run), data_dir_lock(config.layout.lock_file, lock_timeout_s, log=logger.info):
        # --8<-- [start:story] (docs/explanation/pipeline.md shows these lines)
        shards = run(ingest)  # the archive → Parquet shards
        dataset = run(validate, shards)  # the dataset version (shards + added batches), checked
        features = run(preprocess, dataset)  # the fitted transform and training-ready arrays
        model = run(train, features)
        evaluation = run(evaluate, features, model)  # test-set predictions, metrics and plots
        calibration = run(calibrate, features, evaluation)  # the temperature that makes probabilities honest
        corruption = run(robustness, features, model, evaluation, calibration)  # accuracy on corrupted images
        run_report = run(report, shards, dataset, features, model, evaluation, calibration, corruption)
        decision = run(promote, dataset, features, model, evaluation, calibration, run_report)  # the next champion?
        # --8<-- [end:story]
    if run_report is not None and "report" in run.selected:
        publish_report(run_report, config.model)
        logger.info("report: %s", run_report.report_path)
    if decision is not None:  # beside the promotion decision, among the run's artifacts
        publish_registry(config.layout.registry)
    if "train" in run.cached:
        logger.info(REUSED_HINT)
    return run.locations()


# PipelineConfig fields with an option of the same name, their help its field description
CONFIG_OPTIONS = {"epochs": int, "batch_size": int, "learning_rate": float, "seed": int, "promotion_alpha": float}


def build_parser() -> argparse.ArgumentParser:
    fields = PipelineConfig.model_fields
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--model", default="classic", help=f"model preset ({', '.join(PRESETS)}); default classic")
    for name, kind in CONFIG_OPTIONS.items():
        option = "--" + name.replace("_", "-")
        parser.add_argument(option, type=kind, default=fields[name].default, help=fields[name].description)
    parser.add_argument(
        "--min-accuracy",
        type=float,
        help="promotion floor: never promote a model below this test accuracy (default on CIFAR-10: the preset's: "
        + ", ".join(f"{p.name} {p.min_accuracy or 'none'}" for p in PRESETS.values())
        + "; none on other data sets; 0 turns it off)",
    )
    parser.add_argument(
        "--warm-start", choices=["none", "champion"], default="none", help=fields["warm_start"].description
    )
    parser.add_argument("--stages", help=f"comma-separated stages to run (default all): {', '.join(STAGES)}")
    parser.add_argument(
        "--refresh",
        nargs="?",
        const="all",
        help="recompute these stages even if cached (comma-separated; no value = all)",
    )
    parser.add_argument("--plan", action="store_true", help="print what each stage would do, and why; run nothing")
    waits = f"seconds to wait for another run on the same data dir (default {DEFAULT_LOCK_TIMEOUT_S:.0f})"
    parser.add_argument("--lock-timeout", type=float, default=DEFAULT_LOCK_TIMEOUT_S, help=waits)
    return parser


def check_arguments(args: argparse.Namespace) -> tuple[PipelineConfig, list[str], list[str]]:
    """The config and the stages to run and refresh; ValidationError or PipelineInputError (exit 2) first."""
    chosen = {name: getattr(args, name) for name in [*CONFIG_OPTIONS, "model", "min_accuracy", "warm_start"]}
    config = PipelineConfig(**data_settings(args), **chosen)
    stages = parse_stage_list(args.stages, "--stages")
    refresh = parse_stage_list(args.refresh, "--refresh")
    ensure_writable(config.layout.root)
    refuse_another_data_set(config)
    return config, stages, refresh


def run_pipeline(args: argparse.Namespace, checked: tuple[PipelineConfig, list[str], list[str]]) -> int:
    """Print the plan, or run the pipeline as a Prefect flow run."""
    config, stages, refresh = checked
    if args.plan:
        for line in plan_stages(config, set(refresh)):
            print(line)
        return done("plan printed; nothing was run")
    ensure_prefect_api()
    summary = cifar_pipeline(
        config=config, stages=stages or None, refresh=refresh or None, lock_timeout_s=args.lock_timeout
    )
    return done(f"report at {summary.get('report', '(report stage not run)')}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), check_arguments, run_pipeline, argv, what="pipeline")


if __name__ == "__main__":
    sys.exit(main())
