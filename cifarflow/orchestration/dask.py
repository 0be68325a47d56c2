"""The Dask task runner of a sweep's trials: an existing cluster or a LocalCluster for the run, each
worker a single-threaded TensorFlow so that trials do not fight over cores."""

from __future__ import annotations

import contextlib
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
    """One TensorFlow thread in every worker of a cluster we did not start (unless it already ran an op)."""

    def setup(self, worker) -> None:
        os.environ.update(SINGLE_THREAD_ENV)
        tf = sys.modules.get("tensorflow")
        with contextlib.suppress(RuntimeError):  # a TensorFlow that already ran an op keeps its pools
            if tf is not None:
                tf.config.threading.set_intra_op_parallelism_threads(1)
                tf.config.threading.set_inter_op_parallelism_threads(1)


def trial_task_runner(address: str | None = None, n_workers: int | None = None, sequential: bool = False):
    """The cluster at `address`, else a LocalCluster of `n_workers` (default: one per core); `sequential`: no Dask."""
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
    if isinstance(runner, DaskTaskRunner) and runner.address:
        runner.client.register_plugin(SingleThreadedTensorFlow(), name="cifar-single-threaded-tf")


def describe_cluster(runner) -> dict[str, Any]:
    """The runner's kind and, for Dask, its scheduler, workers and threads per worker."""
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
