"""The CIFAR-10 pipeline as one Prefect flow: ingest → validate → preprocess → train → evaluate →
calibrate → robustness → report → promote.

    python flows/cifar_flow.py                                     # the default source (--help says which)
    python flows/cifar_flow.py --source data/cache/cifar-10-python.tar.gz
    python flows/cifar_flow.py --model classic --epochs 20 --plan     # what would run, and why
    python flows/cifar_flow.py --stages evaluate,report,promote    # only these, reusing the rest

Runs on Prefect's temporary local server when no PREFECT_API_URL is set, or against a
running `prefect server start` when it is.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect and TensorFlow are imported

import argparse
import sys

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from cifarflow.cli import ArgumentParser, done, ensure_prefect_api, run_cli, run_command
from cifarflow.config import PipelineConfig, add_data_arguments, data_settings
from cifarflow.files import ensure_writable
from cifarflow.lock import DEFAULT_LOCK_TIMEOUT_S, data_dir_lock
from cifarflow.models.presets import PRESETS
from cifarflow.orchestration.artifacts import publish_registry, publish_report
from cifarflow.orchestration.plan import plan_stages
from cifarflow.orchestration.runner import StageRunner, parse_stage_list
from cifarflow.orchestration.stages import STAGES
from cifarflow.registry.upgrade import upgrade_registry
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
    'to train again, and watch it in the UI: --refresh train (make run ARGS="--refresh train"); '
    "every stage: --refresh"
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
    """ingest → validate → preprocess → train → evaluate → calibrate → robustness → report → promote
    for `config`. `stages` selects some (default all; the others are reused from disk where a
    selected one needs them); `refresh` names stages to recompute even when their output is cached.
    Returns where each stage's output lives."""
    logger = get_run_logger()
    ensure_writable(config.layout.root)
    run = StageRunner(config, parse_stage_list(stages, "stages"), parse_stage_list(refresh, "refresh"))
    with data_dir_lock(config.layout.lock_file, lock_timeout_s, log=logger.info):
        upgrade_registry(config.layout.registry, logger.info)  # an older, restored or damaged registry
        run(ingest)  # the archive → Parquet shards
        run(validate)  # the dataset version (shards + added batches), checked
        run(preprocess)  # the fitted transform and training-ready arrays
        run(train)  # the preset's network, trained
        run(evaluate)  # test-set predictions, metrics and plots
        run(calibrate)  # the temperature that makes its probabilities honest
        run(robustness)  # accuracy under corrupted images
        run_report = run(report)  # report.md, metrics.json, the model card
        decision = run(promote)  # champion/challenger; the winner becomes the next registry version
    if run_report is not None and "report" in run.selected:
        publish_report(run_report, config.model)
        logger.info("report: %s", run_report.report_path)
    if decision is not None:  # beside the promotion decision, among the run's artifacts
        publish_registry(config.layout.registry)
    if "train" in run.cached:
        logger.info(REUSED_HINT)
    return run.locations()


def build_parser() -> argparse.ArgumentParser:
    defaults = PipelineConfig.model_fields
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--model", default="classic", help=f"model preset ({', '.join(PRESETS)}); default classic")
    parser.add_argument("--epochs", type=int, help=defaults["epochs"].description)
    parser.add_argument("--batch-size", type=int, help=defaults["batch_size"].description)
    parser.add_argument("--learning-rate", type=float, help=defaults["learning_rate"].description)
    parser.add_argument("--seed", type=int, default=defaults["seed"].default, help=defaults["seed"].description)
    parser.add_argument(
        "--promotion-alpha",
        type=float,
        default=defaults["promotion_alpha"].default,
        help=defaults["promotion_alpha"].description,
    )
    parser.add_argument(
        "--min-accuracy",
        type=float,
        help="promotion floor: never promote a model below this test accuracy (default: the preset's: "
        + ", ".join(f"{p.name} {p.min_accuracy or 'none'}" for p in PRESETS.values())
        + "; 0 turns it off)",
    )
    parser.add_argument(
        "--warm-start",
        choices=["none", "champion"],
        default="none",
        help=defaults["warm_start"].description,
    )
    parser.add_argument("--stages", help=f"comma-separated stages to run (default all): {','.join(STAGES)}")
    parser.add_argument(
        "--refresh",
        nargs="?",
        const="all",
        default=None,
        help="recompute these stages even if cached (comma-separated; no value = all)",
    )
    parser.add_argument("--plan", action="store_true", help="print what each stage would do, and why; run nothing")
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=DEFAULT_LOCK_TIMEOUT_S,
        help=f"seconds to wait for another run on the same data dir (default {DEFAULT_LOCK_TIMEOUT_S:.0f})",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    return PipelineConfig(
        **data_settings(args),
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        promotion_alpha=args.promotion_alpha,
        min_accuracy=args.min_accuracy,
        warm_start=args.warm_start,
    )


def check_arguments(args: argparse.Namespace) -> tuple[PipelineConfig, list[str], list[str]]:
    """The config and the stages to run and to refresh; a bad value raises ValidationError or
    PipelineInputError (exit 2) before any work."""
    config = config_from_args(args)
    stages = parse_stage_list(args.stages, "--stages")
    refresh = parse_stage_list(args.refresh, "--refresh")
    ensure_writable(config.layout.root)
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
    sys.exit(run_command(main))
