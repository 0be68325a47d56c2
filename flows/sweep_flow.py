"""Hyper-parameter sweep: ingest and preprocess once, then train → evaluate → calibrate → robustness
every trial configuration in parallel on a Dask cluster, report each trial like a normal run, and
publish a leaderboard. (Each trial measures its robustness too: 7 s for `seed`, 2 min for `quick`.)

    python flows/sweep_flow.py --source data/cache/cifar-10-python.tar.gz \\
        --learning-rates 0.001,0.0003 --batch-sizes 32,64 --epochs 5
    python flows/sweep_flow.py --space sweeps/classic-lr-scan.yaml --dask-address tcp://scheduler:8786
    python flows/sweep_flow.py --space sweeps/classic-lr-scan.yaml --dry-run    # list the trials only

Without --dask-address a `distributed.LocalCluster` is started for the run: one single-threaded
worker process per core (TensorFlow limited to one thread per worker, so trials do not fight over
cores). With --dask-address the trials go to that cluster; its workers need this project installed
and must see the data directory at the same path (a shared volume).

Each trial's model, evaluation and report land where a normal run's do (data/models/<key>,
data/evaluations/<key>, data/reports/<run-name>), so trials are cached across sweeps and runs.
The leaderboard goes to data/reports/sweeps/<sweep-name>/ (leaderboard.md/.json and
accuracy_vs_time.png) and to the Prefect UI as a table artifact. A trial that fails (a diverging
learning rate, say) is listed as failed; the sweep itself still completes.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect and TensorFlow are imported

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings

from cifarflow.cli import ArgumentParser, comma_list, done, ensure_prefect_api, fail, run_cli, run_command
from cifarflow.config import PipelineConfig, add_data_arguments, data_settings
from cifarflow.files import read_json
from cifarflow.lock import DEFAULT_LOCK_TIMEOUT_S, data_dir_lock
from cifarflow.orchestration.artifacts import publish_leaderboard
from cifarflow.orchestration.dask import describe_cluster, single_threaded_workers, trial_task_runner
from cifarflow.orchestration.names import last_part, run_name
from cifarflow.orchestration.runner import StageRunner
from cifarflow.orchestration.trials import DATA_STAGES, REPORT_STAGES, TRIAL_STAGES, report_trial, submit_trials
from cifarflow.sweep.leaderboard import (
    TrialOutcome,
    best_outcome,
    leaderboard_rows,
    sweep_summary,
    write_leaderboard,
)
from cifarflow.sweep.space import Trial, build_trials, load_space, merge_space, sweep_name
from tasks import stage_tasks

STAGE_TASKS = stage_tasks()


@flow(name="cifar10-sweep-trials", flow_run_name=run_name("trials", "sweep", "sweep"))
def run_trials(
    sweep: str, trials: list[PipelineConfig], trial_names: list[str], data: dict[str, Any]
) -> dict[str, Any]:
    """The trial stages (train up to the report: `trials.TRIAL_STAGES`) of every trial on this flow's
    task runner (Dask), each trial through the pipeline's runner, starting from the data stages'
    outputs `data`. Returns the cluster it ran on and, per trial, its states and outputs or error
    (`trials.submit_trials`)."""
    logger = get_run_logger()
    context = FlowRunContext.get()
    single_threaded_workers(context.task_runner)
    cluster = describe_cluster(context.task_runner)
    logger.info("submitting %d trials to %s", len(trials), cluster)
    runners = [StageRunner(config, outputs=data, record=False) for config in trials]
    # Task runs travel to the workers with this process's settings. Name the API explicitly: on
    # Prefect's temporary server (no PREFECT_API_URL) each worker would otherwise start its own.
    with temporary_settings(updates={PREFECT_API_URL: str(context.client.api_url)}):
        results = submit_trials(runners, trial_names, STAGE_TASKS)
    for result in results:
        if "error" in result:
            logger.warning("trial %s failed: %s", result["trial"], result["error"])
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
    """Sweep `space` (see `cifarflow.sweep.space`) over `config`'s data. `dask_address`: an existing Dask
    scheduler (tcp://host:8786); none starts a LocalCluster of `n_workers` (default: one per core).
    `sequential`: no Dask; trials one after another in this process. `promote_best`: hand the best
    trial to the champion/challenger step (tasks/promote.py), as a nightly run would be."""
    logger = get_run_logger()
    trials = build_trials(config, merge_space(space, {}))
    name = sweep_name(name or (space or {}).get("name"), trials)
    with data_dir_lock(config.layout.lock_file, lock_timeout_s, log=logger.info):
        data = StageRunner(config)
        for stage in DATA_STAGES:
            data(STAGE_TASKS[stage])
        where = "this process, one at a time" if sequential else dask_address or "a local Dask cluster"
        logger.info("sweep %s: %d trials on %s", name, len(trials), where)
        run = run_trials.with_options(task_runner=trial_task_runner(dask_address, n_workers, sequential))
        ran = run(
            sweep=name, trials=[t.config for t in trials], trial_names=[t.name for t in trials], data=data.outputs
        )
        reported = [_trial_outcome(trial, result, data.outputs) for trial, result in zip(trials, ran["trials"])]
        outcomes = [outcome for outcome, _ in reported]
        directory = config.layout.reports / "sweeps" / name
        rows = leaderboard_rows(outcomes)
        best = best_outcome(outcomes)
        extra = {"best_config": best.trial.config.model_dump(mode="json") if best else None, "cluster": ran["cluster"]}
        files = write_leaderboard(directory, name, rows, extra)
        publish_leaderboard(name, rows, files)
        logger.info("leaderboard: %s", files["markdown"])
        summary = sweep_summary(name, directory, files, outcomes)
        summary |= {"cluster": ran["cluster"], "trials_flow_run_id": ran["flow_run_id"]}
        if best is not None:
            logger.info("best trial %s: test accuracy %.4f", best.trial.name, best.test_accuracy)
        if promote_best and best is not None:
            outputs = reported[outcomes.index(best)][1]  # promoted exactly like a nightly run's model
            promotion = StageRunner(best.trial.config, outputs=outputs)(STAGE_TASKS["promote"])
            logger.info("champion/challenger for the best trial: %s", promotion.summary)
            summary["promotion"] = promotion.summary
        return summary


def _trial_outcome(trial: Trial, result: dict[str, Any], data: dict[str, Any]) -> tuple[TrialOutcome, dict | None]:
    """The trial's report, written by the pipeline's own report task (same layout as a normal run),
    and the trial's stage outputs for its promotion (None when it failed)."""
    if "error" in result:
        states = result["states"] | dict.fromkeys(REPORT_STAGES, "NotRun")
        return TrialOutcome(trial, "failed", states, error=result["error"]), None
    runner = StageRunner(trial.config, outputs=data | result["outputs"], record=False)
    reported, error = report_trial(runner, trial.name, STAGE_TASKS)
    states = result["states"] | reported
    if error is not None:
        return TrialOutcome(trial, "failed", states, error=error), None
    written, outputs = runner.outputs["report"], runner.outputs
    outcome = TrialOutcome(
        trial,
        "cached" if all(result["states"][stage] == "Cached" for stage in TRIAL_STAGES) else "completed",
        states,
        test_accuracy=outputs["evaluate"].test_accuracy,
        test_loss=read_json(written.metrics_path).get("test_loss"),
        train_seconds=outputs["train"].train_seconds,
        report_dir=str(written.directory),
    )
    return outcome, outputs


# ---------------------------------------- command line ----------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", type=Path, help="search space file (YAML or JSON; see cifarflow/sweep/space.py)")
    parser.add_argument("--name", help="sweep name (default: the space's name, or one derived from its trials)")
    parser.add_argument("--models", type=comma_list(str), help="comma-separated model presets")
    parser.add_argument("--learning-rates", type=comma_list(float), help="comma-separated learning rates")
    parser.add_argument("--epochs", type=comma_list(int), help="comma-separated epoch counts")
    parser.add_argument("--batch-sizes", type=comma_list(int), help="comma-separated batch sizes")
    parser.add_argument("--seeds", type=comma_list(int), help="comma-separated random seeds")
    add_data_arguments(parser)
    parser.add_argument("--dask-address", help="existing Dask scheduler, e.g. tcp://scheduler:8786")
    parser.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    parser.add_argument("--sequential", action="store_true", help="no Dask: run the trials one after another")
    parser.add_argument("--promote", action="store_true", help="champion/challenger for the best trial")
    parser.add_argument("--dry-run", action="store_true", help="list the trials and exit")
    return parser


def space_from_args(args: argparse.Namespace) -> dict[str, Any]:
    cli_axes = {
        "model": args.models,
        "learning_rate": args.learning_rates,
        "epochs": args.epochs,
        "batch_size": args.batch_sizes,
        "seed": args.seeds,
    }
    return merge_space(load_space(args.space) if args.space else None, cli_axes, args.name)


def check_arguments(args: argparse.Namespace) -> tuple[PipelineConfig, dict[str, Any], list[Trial]]:
    """The base config, the search space and its trials; a bad value raises ValidationError or
    PipelineInputError (exit 2) before any work."""
    config = PipelineConfig(**data_settings(args))
    space = space_from_args(args)
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
    sys.exit(run_command(main))
