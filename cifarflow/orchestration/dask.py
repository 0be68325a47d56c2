"""The Dask task runner a sweep's trials run on: an existing cluster, or a LocalCluster started for
the run, each worker a single-threaded TensorFlow so that trials do not fight over cores."""

from __future__ import annotations

import os
import sys
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

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


def single_threaded_workers(runner) -> None:
    """Register the single-thread plugin on a cluster we did not start (ours start that way)."""
    if isinstance(runner, DaskTaskRunner) and runner.address:
        runner.client.register_plugin(SingleThreadedTensorFlow(), name="cifar-single-threaded-tf")


def describe_cluster(runner) -> dict[str, Any]:
    """What the trials ran on: the runner's kind and, for Dask, its scheduler, workers and threads."""
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
