"""Hyper-parameter sweep: the data stages once, every trial's stages from train to the report in parallel on a
Dask cluster (default: a LocalCluster, one single-threaded worker per core), and a leaderboard in
data/reports/sweeps/<name>/ and the UI. docs/how-to/sweep.md says how trials are cached and failures listed."""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect and TensorFlow are imported

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings

from cifarflow.cli import ArgumentParser, comma_list, done, ensure_prefect_api, fail, run_cli
from cifarflow.config import PipelineConfig, add_data_arguments, data_settings
from cifarflow.data.ingest import refuse_another_data_set
from cifarflow.files import read_json
from cifarflow.lock import DEFAULT_LOCK_TIMEOUT_S, data_dir_lock
from cifarflow.orchestration.artifacts import publish_leaderboard
from cifarflow.orchestration.dask import describe_cluster, single_threaded_workers, trial_task_runner
from cifarflow.orchestration.names import last_part, run_name
from cifarflow.orchestration.runner import StageRunner
from cifarflow.orchestration.trials import DATA_STAGES, REPORT_STAGES, failure_message, submit_trials
from cifarflow.sweep.leaderboard import rank_rows, trial_row, write_leaderboard
from cifarflow.sweep.space import Trial, build_trials, load_space, merge_space, sweep_name
from cifarflow.tracking import track_sweep
from tasks import stage_tasks

STAGE_TASKS = stage_tasks()


@flow(name="cifar10-sweep-trials", flow_run_name=run_name("trials", "sweep", "sweep"))
def run_trials(
    sweep: str, trials: list[PipelineConfig], trial_names: list[str], data: dict[str, Any]
) -> dict[str, Any]:
    """`submit_trials` on this flow's task runner from the data stages' outputs `data`; with the cluster and run id."""
    logger = get_run_logger()
    context = FlowRunContext.get()
    single_threaded_workers(context.task_runner)
    cluster = describe_cluster(context.task_runner)
    logger.info("submitting %d trials to %s", len(trials), cluster)
    runners = [StageRunner(config, outputs=data, record=False) for config in trials]
    # Task runs travel to the workers with this process's settings. Name the API explicitly: on
    # Prefect's temporary server (no PREFECT_API_URL) each worker would otherwise start its own.
    with temporary_settings(updates={PREFECT_API_URL: str(context.client.api_url)}):
        results = submit_trials(runners, trial_names, STAGE_TASKS)  # a failure is logged by its task run
    return {"cluster": cluster, "flow_run_id": str(context.flow_run.id), "trials": results}


def _sweep_run_name() -> str:
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    return f"sweep-{last_part(parameters.get('name') or (parameters.get('space') or {}).get('name') or 'unnamed')}"


@flow(name="cifar10-sweep", flow_run_name=_sweep_run_name, log_prints=True)
def cifar_sweep(
    config: PipelineConfig = PipelineConfig(),
    space: dict[str, Any] | None = None,
    name: str | None = None,
    dask_address: str | None = None,
    n_workers: int | None = None,
    sequential: bool = False,
    promote_best: bool = False,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> dict[str, Any]:
    """Sweep `space` (`cifarflow.sweep.space`) over `config`'s data on `trial_task_runner(dask_address, n_workers,
    sequential)`; `promote_best`: the best trial through the promote stage."""
    logger = get_run_logger()
    trials = build_trials(config, merge_space(space, {}))
    name = sweep_name(name or (space or {}).get("name"), trials)
    with data_dir_lock(config.layout.lock_file, lock_timeout_s, log=logger.info):
        data = StageRunner(config)
        for stage in DATA_STAGES:
            data.run_declared(STAGE_TASKS[stage])
        logger.info("sweep %s: %d trials", name, len(trials))
        run = run_trials.with_options(task_runner=trial_task_runner(dask_address, n_workers, sequential))
        ran = run(
            sweep=name, trials=[t.config for t in trials], trial_names=[t.name for t in trials], data=data.outputs
        )
        reported = {
            trial.name: _report_trial(trial, result, data.outputs) for trial, result in zip(trials, ran["trials"])
        }
        rows = rank_rows([row for row, _ in reported.values()])
        best = next((trial for trial in trials if trial.name == rows[0]["trial"] and rows[0]["rank"]), None)
        extra = {"best_config": best.config.model_dump(mode="json") if best else None, "cluster": ran["cluster"]}
        files = write_leaderboard(config.layout.sweeps / name, name, rows, extra)
        publish_leaderboard(name, rows, files)
        logger.info("leaderboard: %s", files["markdown"])
        summary = {"name": name, "leaderboard": str(files["markdown"]), "best": best and best.name, "trials": rows}
        summary |= {"cluster": ran["cluster"], "trials_flow_run_id": ran["flow_run_id"]}
        if best is not None:
            logger.info("best trial %s: test accuracy %.4f", best.name, rows[0]["test_accuracy"])
        if promote_best and best is not None:
            outputs = reported[best.name][1]  # promoted exactly like a nightly run's model
            promotion = StageRunner(best.config, outputs=outputs).run_declared(STAGE_TASKS["promote"])
            logger.info("champion/challenger for the best trial: %s", promotion.summary)
            summary["promotion"] = promotion.summary
            outputs["promote"] = promotion  # its MLflow run gets the registry version, when promoted
    track_sweep(config, name, trials, reported, files["markdown"].parent)  # an MLflow run, if installed; lock freed
    return summary


def _report_trial(trial: Trial, result: dict[str, Any], data: dict[str, Any]) -> tuple[dict[str, Any], dict | None]:
    """`REPORT_STAGES` of a trial in this process; its leaderboard row and outputs (None when it failed)."""
    if result["error"]:
        states = result["states"] | dict.fromkeys(REPORT_STAGES, "NotRun")
        return trial_row(trial, "failed", states, error=result["error"]), None
    runner = StageRunner(trial.config, outputs=data | result["outputs"], record=False)
    states = dict(result["states"])
    for stage in REPORT_STAGES:
        call = runner.prepare(STAGE_TASKS[stage], task_run_name=f"{stage}-{trial.name}")
        state = call.task(**call.arguments, return_state=True)
        states[stage] = state.name
        if not state.is_completed():
            return trial_row(trial, "failed", states, error=failure_message(state)), None
        runner.keep(call, state)
    outputs = runner.outputs
    return trial_row(
        trial,
        "cached" if set(result["states"].values()) == {"Cached"} else "completed",
        states,
        test_accuracy=outputs["evaluate"].test_accuracy,
        test_loss=read_json(outputs["report"].metrics_path).get("test_loss"),
        train_seconds=outputs["train"].train_seconds,
        report=str(outputs["report"].directory),
    ), outputs


# ---------------------------------------- command line ----------------------------------------


# the trial axes with an option of their own: field → (option, type, help)
AXES = {
    "model": ("--models", str, "model presets"),
    "learning_rate": ("--learning-rates", float, "learning rates"),
    "epochs": ("--epochs", int, "epoch counts"),
    "batch_size": ("--batch-sizes", int, "batch sizes"),
    "seed": ("--seeds", int, "random seeds"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", type=Path, help="search space file (YAML or JSON; see cifarflow/sweep/space.py)")
    parser.add_argument("--name", help="sweep name (default: the space's name, or one derived from its trials)")
    for field, (option, kind, what) in AXES.items():
        parser.add_argument(option, dest=field, type=comma_list(kind), help=f"comma-separated {what}")
    add_data_arguments(parser)
    parser.add_argument("--dask-address", help="existing Dask scheduler, e.g. tcp://scheduler:8786")
    parser.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    parser.add_argument("--sequential", action="store_true", help="no Dask: run the trials one after another")
    parser.add_argument("--promote", action="store_true", help="champion/challenger for the best trial")
    parser.add_argument("--dry-run", action="store_true", help="list the trials and exit")
    return parser


def check_arguments(args: argparse.Namespace) -> tuple[PipelineConfig, dict[str, Any], list[Trial]]:
    """The base config, space and trials; ValidationError or PipelineInputError (exit 2) before any work."""
    config = PipelineConfig(**data_settings(args))
    refuse_another_data_set(config)
    axes = {field: getattr(args, field) for field in AXES}  # an axis given here replaces the file's
    space = merge_space(load_space(args.space) if args.space else None, axes, args.name)
    return config, space, build_trials(config, space)


def run_sweep(args: argparse.Namespace, checked: tuple[PipelineConfig, dict[str, Any], list[Trial]]) -> int:
    """List the trials, or run the sweep as a Prefect flow run; exit 1 when every trial failed."""
    config, space, trials = checked
    if args.dry_run:
        print(f"sweep {sweep_name(space['name'], trials)}: {len(trials)} trials")
        for trial in trials:
            print(f"  {trial.name}")
        return done("dry run: the trials above were planned, none was run")
    ensure_prefect_api()
    summary = cifar_sweep(
        config=config,
        space=space,
        name=args.name,
        dask_address=args.dask_address,
        n_workers=args.workers,
        sequential=args.sequential,
        promote_best=args.promote,
    )
    failed = [t for t in summary["trials"] if t["status"] == "failed"]
    where = f"leaderboard at {summary['leaderboard']} ({len(failed)} of {len(summary['trials'])} trials failed)"
    return done(where) if len(failed) < len(summary["trials"]) else fail(f"every trial failed; {where}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), check_arguments, run_sweep, argv, what="sweep")


if __name__ == "__main__":
    sys.exit(main())
