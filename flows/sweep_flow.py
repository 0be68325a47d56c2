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

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from cifarflow.environment import apply_defaults  # noqa: E402

apply_defaults()  # before Prefect and TensorFlow read the environment

from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402
from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.context import FlowRunContext  # noqa: E402
from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402
from prefect.states import State  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from prefect_dask import DaskTaskRunner  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from cifarflow.cli import EXIT_FAILED, EXIT_USAGE, ArgumentParser, done, ensure_prefect_api, fail, run_command  # noqa: E402
from cifarflow.config import PipelineConfig, add_data_arguments, data_settings  # noqa: E402
from cifarflow.errors import PipelineInputError  # noqa: E402
from cifarflow.files import read_json  # noqa: E402
from cifarflow.lock import DEFAULT_LOCK_TIMEOUT_S, data_dir_lock  # noqa: E402
from cifarflow.orchestration.cache import key_parts  # noqa: E402
from cifarflow.orchestration.runner import prepare_stage, run_stage, settle  # noqa: E402
from cifarflow.orchestration.stages import SPECS  # noqa: E402
from cifarflow.sweep.leaderboard import TrialOutcome, leaderboard_rows, write_leaderboard  # noqa: E402
from cifarflow.sweep.space import Trial, build_trials, load_space, merge_space, sweep_name  # noqa: E402
from tasks.evaluate import evaluate  # noqa: E402
from tasks.ingest import ingest  # noqa: E402
from tasks.preprocess import preprocess  # noqa: E402
from tasks.promote import promote  # noqa: E402
from tasks.report import report  # noqa: E402
from tasks.train import train  # noqa: E402
from tasks.validate import validate  # noqa: E402

# One thread per TensorFlow op pool in each worker: the cluster's parallelism is its worker processes.
SINGLE_THREAD_ENV = {
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


class SingleThreadedTensorFlow(WorkerPlugin):
    """Limits TensorFlow to one thread in every worker of a cluster we did not start ourselves.

    Env vars take effect if TensorFlow has not run an op in that worker yet; otherwise the runtime
    setting is tried, and a worker whose TensorFlow is already initialized keeps its pools."""

    def setup(self, worker) -> None:
        os.environ.update(SINGLE_THREAD_ENV)
        if "tensorflow" in sys.modules:
            tf = sys.modules["tensorflow"]
            try:
                tf.config.threading.set_intra_op_parallelism_threads(1)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # already initialized in this worker
                pass


def trial_task_runner(address: str | None = None, n_workers: int | None = None, sequential: bool = False):
    """The existing cluster at `address`, or a LocalCluster of `n_workers` (default: one per core)
    single-threaded worker processes, started and stopped with the run. `sequential`: no Dask, one
    trial after another in this process, TensorFlow using every core (the baseline, or for debugging)."""
    if sequential:
        return ThreadPoolTaskRunner(max_workers=1)
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": n_workers or os.cpu_count() or 1,
            "threads_per_worker": 1,
            "processes": True,
            "env": SINGLE_THREAD_ENV,
            "dashboard_address": ":0",  # its HTTP server (health, metrics) on a free port, never a clash on 8787
        },
    )


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
    sweep: str,
    trials: list[PipelineConfig],
    trial_names: list[str],
    features: Any,
) -> dict[str, Any]:
    """train → evaluate for every trial, all submitted at once to this flow's task runner (Dask).

    Returns the cluster it ran on and, per trial, the Prefect states and results; never raises for
    a failed trial."""
    logger = get_run_logger()
    context = FlowRunContext.get()
    runner = context.task_runner
    if isinstance(runner, DaskTaskRunner) and runner.address:  # a cluster we did not start
        runner.client.register_plugin(SingleThreadedTensorFlow(), name="cifar-single-threaded-tf")
    # Task runs travel to the workers with this process's settings. Name the API explicitly: on
    # Prefect's temporary server (no PREFECT_API_URL) each worker would otherwise start its own.
    with temporary_settings(updates={PREFECT_API_URL: str(context.client.api_url)}):
        submitted = _submit_trials(trials, trial_names, features)
    cluster = _describe_cluster(runner)
    logger.info("submitted %d trials to %s", len(submitted), cluster)
    outcomes = []
    for name, (train_future, train_found), (evaluate_future, evaluate_found) in submitted:
        if evaluate_future is not None:
            evaluate_future.wait()
        train_state = train_future.state
        evaluate_state = evaluate_future.state if evaluate_future is not None else None
        outcome: dict[str, Any] = {
            "trial": name,
            "states": {"train": _state_name(train_state), "evaluate": _state_name(evaluate_state)},
        }
        if train_state.is_completed() and evaluate_state is not None and evaluate_state.is_completed():
            # a Cached stage's output as found at the data dir's current place (it may have moved)
            outcome |= {"train": settle(train_state, train_found), "evaluate": settle(evaluate_state, evaluate_found)}
        else:
            failed = train_state if not train_state.is_completed() else evaluate_state
            outcome["error"] = _message(failed)
            logger.warning("trial %s failed: %s", name, outcome["error"])
        outcomes.append(outcome)
    return {"cluster": cluster, "flow_run_id": str(context.flow_run.id), "trials": outcomes}


def _describe_cluster(runner) -> dict[str, Any]:
    if not isinstance(runner, DaskTaskRunner):
        return {"runner": type(runner).__name__}
    info = runner.client.scheduler_info()
    workers = info.get("workers", {}).values()
    return {
        "runner": "DaskTaskRunner",
        "scheduler": info.get("address"),
        "workers": len(workers),
        "threads": [w.get("nthreads") for w in workers],
    }


def _prepared(task, config: PipelineConfig, upstream: dict[str, Any], name: str):
    """The stage's task for a trial, named after it, its key, and its output if already on disk (the
    runner's own preparation)."""
    prepared, parts, found = prepare_stage(task, config, upstream, task_run_name=f"{task.name}-{name}")
    return prepared, parts.key, found


def _submit_trials(trials: list[PipelineConfig], trial_names: list[str], features) -> list[tuple]:
    """Submit every trial's train at once, then each trial's evaluate as soon as its model exists
    (an evaluate's cache key includes its model's fingerprint, so it is known only then). Returns,
    per trial, its name and (future, output found on disk) for train and for evaluate."""
    trains = []
    for config, name in zip(trials, trial_names):
        task, key, found = _prepared(train, config, {"preprocess": features}, name)
        trains.append((config, name, task.submit(config=config, key=key, preprocess=features), found))
    submitted = []
    for config, name, train_future, train_found in trains:
        train_future.wait()
        evaluate_future = evaluate_found = None
        if train_future.state.is_completed():
            upstream = {"preprocess": features, "train": settle(train_future.state, train_found)}
            task, key, evaluate_found = _prepared(evaluate, config, upstream, name)
            evaluate_future = task.submit(config=config, key=key, **upstream)
        submitted.append((name, (train_future, train_found), (evaluate_future, evaluate_found)))
    return submitted


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
    layout = config.layout
    with data_dir_lock(layout.lock_file, lock_timeout_s, log=logger.info):
        shards = run_stage(ingest, config, {})
        dataset = run_stage(validate, config, {"ingest": shards})
        features = run_stage(preprocess, config, {"validate": dataset})
        data = {"ingest": shards, "validate": dataset, "preprocess": features}
        where = "this process, one at a time" if sequential else dask_address or "a local Dask cluster"
        logger.info("sweep %s: %d trials on %s", name, len(trials), where)
        run = run_trials.with_options(task_runner=trial_task_runner(dask_address, n_workers, sequential))
        ran = run(
            sweep=name, trials=[t.config for t in trials], trial_names=[t.name for t in trials], features=features
        )
        outcomes = [_report_trial(trial, result, data) for trial, result in zip(trials, ran["trials"])]
        summary = _publish(name, outcomes, layout.reports / "sweeps" / name, ran["cluster"], logger)
        summary |= {"cluster": ran["cluster"], "trials_flow_run_id": ran["flow_run_id"]}
        if promote_best and summary["best"]:
            index = [t.name for t in trials].index(summary["best"])
            summary["promotion"] = _promote(trials[index].config, ran["trials"][index], data, logger)
        return summary


def _promote(config: PipelineConfig, result: dict[str, Any], data: dict[str, Any], logger) -> str:
    """The best trial goes through champion/challenger exactly like a nightly run's model."""
    upstream = data | {"train": result["train"], "evaluate": result["evaluate"]}
    upstream["report"] = SPECS["report"].find(config, key_parts(SPECS["report"], config, upstream).key, upstream)
    promotion = run_stage(promote, config, {k: v for k, v in upstream.items() if k in SPECS["promote"].upstream})
    logger.info("champion/challenger for the best trial: %s", promotion.summary)
    return promotion.summary


def _report_trial(trial: Trial, result: dict[str, Any], data: dict[str, Any]) -> TrialOutcome:
    """The trial's report, written by the pipeline's own report task (same layout as a normal run)."""
    states = dict(result["states"])
    if "error" in result:
        return TrialOutcome(trial, "failed", states | {"report": "NotRun"}, error=result["error"])
    config, model, evaluation = trial.config, result["train"], result["evaluate"]
    upstream = data | {"train": model, "evaluate": evaluation}
    task, key, found = _prepared(report, config, upstream, trial.name)
    state = task(config=config, key=key, return_state=True, **upstream)
    states["report"] = state.name
    if not state.is_completed():
        return TrialOutcome(trial, "failed", states, error=_message(state))
    written = settle(state, found)
    all_cached = all(s == "Cached" for s in (states["train"], states["evaluate"]))
    return TrialOutcome(
        trial,
        "cached" if all_cached else "completed",
        states,
        test_accuracy=evaluation.test_accuracy,
        test_loss=read_json(written.metrics_path).get("test_loss"),
        train_seconds=model.train_seconds,
        report_dir=str(written.directory),
    )


def _publish(name: str, outcomes: list[TrialOutcome], directory: Path, cluster: dict, logger) -> dict[str, Any]:
    rows = leaderboard_rows(outcomes)
    best = next((o for o in sorted(outcomes, key=lambda o: -(o.test_accuracy or 0)) if o.succeeded), None)
    extra = {"best_config": best.trial.config.model_dump(mode="json") if best else None, "cluster": cluster}
    files = write_leaderboard(directory, name, rows, extra)
    table = [{k: ("" if v is None else v) for k, v in row.items()} for row in rows]
    create_table_artifact(
        table=table,
        key=f"sweep-{name}-leaderboard"[:100],
        description=f"Sweep {name}: {len(outcomes)} trials, best first",
    )
    markdown = files["markdown"].read_text()
    if "plot" in files:
        markdown = markdown.replace(f"]({files['plot'].name})", f"](file://{files['plot']})")
    create_markdown_artifact(markdown=markdown, key=f"sweep-{name}-report"[:100], description=f"Sweep {name}")
    logger.info("leaderboard: %s", files["markdown"])
    if best:
        logger.info("best trial %s: test accuracy %.4f", best.trial.name, best.test_accuracy)
    return {
        "name": name,
        "directory": str(directory),
        "leaderboard": str(files["markdown"]),
        "plot": str(files.get("plot", "")),
        "best": best.trial.name if best else None,
        "trials": [
            {
                "trial": o.trial.name,
                "status": o.status,
                "states": o.states,
                "test_accuracy": o.test_accuracy,
                "train_seconds": o.train_seconds,
                "report": o.report_dir,
                "error": o.error,
            }
            for o in outcomes
        ],
    }


# ---------------------------------------- command line ----------------------------------------


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", type=Path, help="search space file (YAML or JSON; see cifarflow/sweep/space.py)")
    parser.add_argument("--name", help="sweep name (default: the space's name, or one derived from its trials)")
    parser.add_argument("--models", type=_names, help="comma-separated model presets")
    parser.add_argument("--learning-rates", type=_floats, help="comma-separated learning rates")
    parser.add_argument("--epochs", type=_ints, help="comma-separated epoch counts")
    parser.add_argument("--batch-sizes", type=_ints, help="comma-separated batch sizes")
    parser.add_argument("--seeds", type=_ints, help="comma-separated random seeds")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = PipelineConfig(**data_settings(args))
        space = space_from_args(args)
        trials = build_trials(config, space)
    except ValidationError as error:
        return fail(f"invalid options: {'; '.join(e['msg'] for e in error.errors())}", EXIT_USAGE)
    except PipelineInputError as error:
        return fail(str(error), EXIT_USAGE)
    if args.dry_run:
        print(f"sweep {sweep_name(space['name'], trials)}: {len(trials)} trials")
        for trial in trials:
            print(f"  {trial.name}")
        return done("dry run: the trials above were planned, none was run")
    try:
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
    except Exception as error:  # the flow already logged the traceback
        return fail(f"sweep failed: {type(error).__name__}: {error}", EXIT_FAILED)
    failed = [t for t in summary["trials"] if t["status"] == "failed"]
    where = f"leaderboard at {summary['leaderboard']} ({len(failed)} of {len(summary['trials'])} trials failed)"
    return done(where) if len(failed) < len(summary["trials"]) else fail(f"every trial failed; {where}", EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(run_command(main))
