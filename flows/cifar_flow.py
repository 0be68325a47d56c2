"""The CIFAR-10 pipeline: ingest → preprocess → train → evaluate → report, as one Prefect flow.

    python flows/cifar_flow.py --source data/cache/cifar-10-python.tar.gz
    python flows/cifar_flow.py --model seed --epochs 20 --plan     # what would run, and why
    python flows/cifar_flow.py --stages evaluate,report            # only these, reusing the rest

Runs on Prefect's temporary local server when no PREFECT_API_URL is set, or against a
running `prefect server start` when it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from tasks.environment import apply_defaults  # noqa: E402

apply_defaults()  # before Prefect and TensorFlow read the environment

from prefect import flow, get_run_logger  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from tasks.artifacts import publish_report  # noqa: E402
from tasks.config import PipelineConfig, add_data_arguments, data_settings  # noqa: E402
from tasks.errors import PipelineInputError  # noqa: E402
from tasks.files import ensure_writable  # noqa: E402
from tasks.lock import data_dir_lock  # noqa: E402
from tasks.plan import persisted_upstream, plan_stages  # noqa: E402
from tasks.presets import PRESETS  # noqa: E402
from tasks.promote_task import run_promote  # noqa: E402
from tasks.stages import SPECS, STAGES, run_stage  # noqa: E402


def _run_name() -> str:
    config = flow_run.parameters.get("config") or {}
    config = config if isinstance(config, dict) else config.model_dump()
    model = config.get("model", "seed")
    epochs = config.get("epochs") or PRESETS[model].epochs if model in PRESETS else config.get("epochs")
    return f"{model}-e{epochs}-{flow_run.scheduled_start_time.strftime('%Y%m%d-%H%M%S')}"


def parse_stage_list(value: list[str] | str | None, what: str) -> list[str]:
    names = value.split(",") if isinstance(value, str) else list(value or [])
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in STAGES and n != "all"]
    if unknown:
        raise PipelineInputError(f"unknown stage(s) in {what}: {', '.join(unknown)}; stages are {', '.join(STAGES)}")
    return list(STAGES) if "all" in names else names


@flow(name="cifar10-pipeline", flow_run_name=_run_name, log_prints=True)
def cifar_pipeline(
    config: PipelineConfig = PipelineConfig(),
    stages: list[str] | None = None,
    refresh: list[str] | None = None,
    lock_timeout_s: float = 1800.0,
) -> dict:
    """Run the selected stages (default: all) for `config`; stages not selected reuse their
    persisted outputs. `refresh` names stages to recompute even when their output is cached."""
    logger = get_run_logger()
    selected = parse_stage_list(stages, "stages") or list(STAGES)
    forced = set(parse_stage_list(refresh, "refresh"))
    layout = config.layout
    ensure_writable(layout.root)
    last_selected = max(STAGES.index(stage) for stage in selected)
    results: dict = {}
    with data_dir_lock(layout.lock_file, lock_timeout_s, log=logger.info):
        for stage in STAGES:
            if stage not in selected:
                if STAGES.index(stage) < last_selected:  # an input of a selected stage: reuse it from disk
                    results[stage] = persisted_upstream(config, stage, results)
                continue
            upstream = {name: results[name] for name in SPECS[stage].upstream}
            results[stage] = run_stage(stage, config, upstream, force=stage in forced)
        if "report" in selected:  # champion/challenger; adds its section to report.md (tasks/promote.py)
            results["promote"] = run_promote(config, results)
    if "report" in results and "report" in selected:
        publish_report(results["report"], config.model)
        logger.info("report: %s", results["report"].report_path)
    return {
        stage: str(getattr(r, "directory", None) or getattr(r, "manifest_path", "")) for stage, r in results.items()
    }


def build_parser() -> argparse.ArgumentParser:
    defaults = PipelineConfig.model_fields
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        default=1800.0,
        help="seconds to wait for another run on the same data dir (default 1800)",
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
        print(f"error: invalid options: {problems}", file=sys.stderr)
        return 2
    except PipelineInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.plan:
        for line in plan_stages(config, set(refresh)):
            print(line)
        return 0
    try:
        summary = cifar_pipeline(
            config=config, stages=stages or None, refresh=refresh or None, lock_timeout_s=args.lock_timeout
        )
    except PipelineInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # the flow already logged the traceback; end with its real message
        print(f"error: pipeline failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"done: report at {summary.get('report', '(report stage not run)')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
