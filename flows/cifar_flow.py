"""The CIFAR-10 pipeline: ingest → validate → preprocess → train → evaluate → report → promote, as one Prefect flow.

    python flows/cifar_flow.py --source data/cache/cifar-10-python.tar.gz
    python flows/cifar_flow.py --model seed --epochs 20 --plan     # what would run, and why
    python flows/cifar_flow.py --stages evaluate,report,promote    # only these, reusing the rest

Runs on Prefect's temporary local server when no PREFECT_API_URL is set, or against a
running `prefect server start` when it is.
"""

from __future__ import annotations

import argparse
import sys

from cifarflow.environment import apply_defaults

apply_defaults()  # before Prefect and TensorFlow read the environment

from prefect import flow, get_run_logger  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from cifarflow.cli import EXIT_FAILED, EXIT_USAGE, ArgumentParser, done, ensure_prefect_api, fail, run_command  # noqa: E402
from cifarflow.config import PipelineConfig, add_data_arguments, data_settings  # noqa: E402
from cifarflow.errors import PipelineInputError  # noqa: E402
from cifarflow.files import ensure_writable  # noqa: E402
from cifarflow.lock import DEFAULT_LOCK_TIMEOUT_S, data_dir_lock  # noqa: E402
from cifarflow.models.registry import PRESETS  # noqa: E402
from cifarflow.orchestration.artifacts import publish_registry, publish_report  # noqa: E402
from cifarflow.orchestration.plan import plan_stages  # noqa: E402
from cifarflow.orchestration.runner import StageRunner, parse_stage_list  # noqa: E402
from cifarflow.orchestration.stages import STAGES  # noqa: E402
from cifarflow.registry.upgrade import upgrade_registry  # noqa: E402
from tasks.evaluate import evaluate  # noqa: E402
from tasks.ingest import ingest  # noqa: E402
from tasks.preprocess import preprocess  # noqa: E402
from tasks.promote import promote  # noqa: E402
from tasks.report import report  # noqa: E402
from tasks.train import train  # noqa: E402
from tasks.validate import validate  # noqa: E402


def _run_name() -> str:
    config = flow_run.parameters.get("config") or {}
    config = config if isinstance(config, dict) else config.model_dump()
    model = config.get("model", "seed")
    epochs = config.get("epochs") or (PRESETS[model].epochs if model in PRESETS else None)
    return f"{model}-e{epochs}-{flow_run.scheduled_start_time.strftime('%Y%m%d-%H%M%S')}"


@flow(name="cifar10-pipeline", flow_run_name=_run_name, log_prints=True)
def cifar_pipeline(
    config: PipelineConfig = PipelineConfig(),
    stages: list[str] | None = None,
    refresh: list[str] | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> dict:
    """ingest → validate → preprocess → train → evaluate → report → promote for `config`. `stages` selects some
    (default all; the others are reused from disk where a selected one needs them); `refresh` names
    stages to recompute even when their output is cached. Returns where each stage's output lives."""
    logger = get_run_logger()
    ensure_writable(config.layout.root)
    stage = StageRunner(config, parse_stage_list(stages, "stages"), parse_stage_list(refresh, "refresh"))
    with data_dir_lock(config.layout.lock_file, lock_timeout_s, log=logger.info):
        upgrade_registry(config.layout.registry, logger.info)  # an older, restored or damaged registry
        shards = stage(ingest)
        dataset = stage(validate, ingest=shards)
        features = stage(preprocess, validate=dataset)
        model = stage(train, preprocess=features)
        evaluation = stage(evaluate, preprocess=features, train=model)
        run_report = stage(
            report, ingest=shards, validate=dataset, preprocess=features, train=model, evaluate=evaluation
        )
        decision = stage(
            promote, validate=dataset, preprocess=features, train=model, evaluate=evaluation, report=run_report
        )
    if run_report is not None and "report" in stage.selected:
        publish_report(run_report, config.model)
        logger.info("report: %s", run_report.report_path)
    if decision is not None:  # beside the promotion decision, among the run's artifacts
        publish_registry(config.layout.registry)
    outputs = zip(STAGES, (shards, dataset, features, model, evaluation, run_report, decision))
    return {name: str(output.location) for name, output in outputs if output is not None}


def build_parser() -> argparse.ArgumentParser:
    defaults = PipelineConfig.model_fields
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--model", default="seed", help=f"model preset ({', '.join(PRESETS)}); default seed")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        stages = parse_stage_list(args.stages, "--stages")
        refresh = parse_stage_list(args.refresh, "--refresh")
        ensure_writable(config.layout.root)
    except ValidationError as error:
        problems = "; ".join(
            f"--{'-'.join(map(str, e['loc'])).replace('_', '-') or 'options'}: {e['msg']}" for e in error.errors()
        )
        return fail(f"invalid options: {problems}", EXIT_USAGE)
    except PipelineInputError as error:
        return fail(str(error), EXIT_USAGE)
    if args.plan:
        for line in plan_stages(config, set(refresh)):
            print(line)
        return done("plan printed; nothing was run")
    try:
        ensure_prefect_api()
        summary = cifar_pipeline(
            config=config, stages=stages or None, refresh=refresh or None, lock_timeout_s=args.lock_timeout
        )
    except PipelineInputError as error:
        return fail(str(error), EXIT_FAILED)
    except Exception as error:  # the flow already logged the traceback; end with its real message
        return fail(f"pipeline failed: {type(error).__name__}: {error}", EXIT_FAILED)
    return done(f"report at {summary.get('report', '(report stage not run)')}")


if __name__ == "__main__":
    sys.exit(run_command(main))
