"""Hyper-parameter sweep: ingest and preprocess once, then train → evaluate every trial configuration
in parallel on a Dask cluster, report each trial like a normal run, and publish a leaderboard.

    python flows/sweep_flow.py --source data/cache/cifar-10-python.tar.gz \\
        --learning-rates 0.001,0.0003 --batch-sizes 32,64 --epochs 5
    python flows/sweep_flow.py --space sweeps/seed-lr-scan.yaml --dask-address tcp://scheduler:8786
    python flows/sweep_flow.py --space sweeps/seed-lr-scan.yaml --dry-run    # list the trials only

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
from prefect.states import State

from cifarflow.cli import ArgumentParser, comma_list, done, ensure_prefect_api, fail, run_cli, run_command
from cifarflow.config import PipelineConfig, add_data_arguments, data_settings
from cifarflow.files import read_json
from cifarflow.lock import DEFAULT_LOCK_TIMEOUT_S, data_dir_lock
from cifarflow.orchestration.artifacts import publish_leaderboard
from cifarflow.orchestration.dask import describe_cluster, single_threaded_workers, trial_task_runner
from cifarflow.orchestration.runner import StageRunner
from cifarflow.sweep.leaderboard import (
    TrialOutcome,
    best_outcome,
    leaderboard_rows,
    sweep_summary,
    write_leaderboard,
)
from cifarflow.sweep.space import Trial, build_trials, load_space, merge_space, sweep_name
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.preprocess import preprocess
from tasks.promote import promote
from tasks.report import report
from tasks.train import train
from tasks.validate import validate


def _state_name(state: State | None) -> str:
    return state.name if state is not None else "NotRun"


def _message(state: State) -> str:
    """The failure's own message (the exception's), not Prefect's wrapper text."""
    try:
        state.result(raise_on_failure=True)
    except Exception as error:  # the trial's exception, re-raised from its state
        return f"{type(error).__name__}: {error}"
    return state.message or state.name


@flow(name="cifar10-sweep-trials", flow_run_name="trials-{sweep}")
def run_trials(
    sweep: str, trials: list[PipelineConfig], trial_names: list[str], data: dict[str, Any]
) -> dict[str, Any]:
    """train → evaluate for every trial, all submitted at once to this flow's task runner (Dask), each
    through the pipeline's runner with the data stages' outputs `data`.

    Returns the cluster it ran on and, per trial, the Prefect states and the stage outputs; never
    raises for a failed trial."""
    logger = get_run_logger()
    context = FlowRunContext.get()
    single_threaded_workers(context.task_runner)
    # Task runs travel to the workers with this process's settings. Name the API explicitly: on
    # Prefect's temporary server (no PREFECT_API_URL) each worker would otherwise start its own.
    with temporary_settings(updates={PREFECT_API_URL: str(context.client.api_url)}):
        runners = [StageRunner(config, outputs=data, record=False) for config in trials]
        trains = [
            (runner, runner.prepare(train, task_run_name=f"train-{name}")) for runner, name in zip(runners, trial_names)
        ]
        futures = [prepared.task.submit(**runner.arguments(prepared)) for runner, prepared in trains]
        cluster = describe_cluster(context.task_runner)
        logger.info("submitted %d trials to %s", len(trials), cluster)
        # an evaluate's key includes its model's fingerprint, so it is submitted once its train is done
        evaluations = []
        for (runner, prepared), future, name in zip(trains, futures, trial_names):
            future.wait()
            if future.state.is_completed():
                runner.accept(prepared, future.state)
                evaluating = runner.prepare(evaluate, task_run_name=f"evaluate-{name}")
                evaluations.append((evaluating, evaluating.task.submit(**runner.arguments(evaluating))))
            else:
                evaluations.append((None, None))
    outcomes = []
    for runner, name, future, (evaluating, evaluation) in zip(runners, trial_names, futures, evaluations):
        if evaluation is not None:
            evaluation.wait()
        states = {"train": _state_name(future.state), "evaluate": _state_name(evaluation and evaluation.state)}
        outcome: dict[str, Any] = {"trial": name, "states": states}
        if evaluation is not None and evaluation.state.is_completed():
            runner.accept(evaluating, evaluation.state)
            outcome |= {"train": runner.outputs["train"], "evaluate": runner.outputs["evaluate"]}
        else:
            outcome["error"] = _message(evaluation.state if evaluation is not None else future.state)
            logger.warning("trial %s failed: %s", name, outcome["error"])
        outcomes.append(outcome)
    return {"cluster": cluster, "flow_run_id": str(context.flow_run.id), "trials": outcomes}


def _sweep_run_name() -> str:
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    return f"sweep-{parameters.get('name') or (parameters.get('space') or {}).get('name') or 'unnamed'}"


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
        data(ingest)
        data(validate)
        data(preprocess)
        where = "this process, one at a time" if sequential else dask_address or "a local Dask cluster"
        logger.info("sweep %s: %d trials on %s", name, len(trials), where)
        run = run_trials.with_options(task_runner=trial_task_runner(dask_address, n_workers, sequential))
        ran = run(
            sweep=name, trials=[t.config for t in trials], trial_names=[t.name for t in trials], data=data.outputs
        )
        runners = [_report_trial(trial, result, data.outputs) for trial, result in zip(trials, ran["trials"])]
        outcomes = [outcome for outcome, _ in runners]
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
            promotion = runners[outcomes.index(best)][1](promote)  # exactly like a nightly run's model
            logger.info("champion/challenger for the best trial: %s", promotion.summary)
            summary["promotion"] = promotion.summary
        return summary


def _report_trial(trial: Trial, result: dict[str, Any], data: dict[str, Any]) -> tuple[TrialOutcome, StageRunner]:
    """The trial's report, written by the pipeline's own report task (same layout as a normal run),
    and the trial's runner, holding its stages' outputs."""
    states = dict(result["states"])
    runner = StageRunner(trial.config, outputs=data, record=False)
    if "error" in result:
        return TrialOutcome(trial, "failed", states | {"report": "NotRun"}, error=result["error"]), runner
    runner.outputs |= {"train": result["train"], "evaluate": result["evaluate"]}
    prepared = runner.prepare(report, task_run_name=f"report-{trial.name}")
    state = prepared.task(**runner.arguments(prepared), return_state=True)
    states["report"] = state.name
    if not state.is_completed():
        return TrialOutcome(trial, "failed", states, error=_message(state)), runner
    written = runner.accept(prepared, state)
    runner.record = True  # a promotion of the best trial is the pipeline's last promote, as a nightly run's
    all_cached = all(s == "Cached" for s in (states["train"], states["evaluate"]))
    outcome = TrialOutcome(
        trial,
        "cached" if all_cached else "completed",
        states,
        test_accuracy=result["evaluate"].test_accuracy,
        test_loss=read_json(written.metrics_path).get("test_loss"),
        train_seconds=result["train"].train_seconds,
        report_dir=str(written.directory),
    )
    return outcome, runner


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
