"""The one-command alternative to `prefect deploy` + a worker: create the nightly deployment and run
its flow runs from this process.

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py

Schedule, event trigger (a retrain when images are added), parameters, tags and concurrency limit
are read from the `nightly-retrain` entry of `deployments/prefect.yaml`, so both ways of running the
pipeline stay the same. The served
deployment is called `cifar10-pipeline/nightly-serve`: Prefect 3.8.8 cannot serve over a
deployment that `prefect deploy` created (the served runs then fail looking for flow code at
`<repo>/None`), so the two keep separate names. Use one or the other, not both.

Runs start in the repository root (relative paths in the parameters resolve there). Stop with
Ctrl-C or SIGTERM; the deployment's schedule is paused on shutdown (Prefect's `pause_on_shutdown`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from cifarflow.cli import ArgumentParser, done, ensure_prefect_api, run_cli, run_command
from cifarflow.errors import PipelineInputError

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO_ROOT / "deployments" / "prefect.yaml"


def deployment_spec(name: str = "nightly-retrain", path: Path = PREFECT_YAML) -> dict[str, Any]:
    """The named deployment's entry of prefect.yaml (PipelineInputError when there is none)."""
    import yaml

    spec = yaml.safe_load(path.read_text())
    for deployment in spec.get("deployments", []):
        if deployment.get("name") == name:
            return deployment
    raise PipelineInputError(f"no deployment named {name!r} in {path}")


def serve_options(spec: dict[str, Any]) -> dict[str, Any]:
    """`Flow.serve` keyword arguments equivalent to a prefect.yaml deployment entry."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.events import DeploymentTriggerTypes
    from prefect.schedules import Cron
    from pydantic import TypeAdapter

    schedules = [
        Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True)) for s in spec.get("schedules", [])
    ]
    limit = spec.get("concurrency_limit")
    if isinstance(limit, dict):
        limit = ConcurrencyLimitConfig(
            limit=limit["limit"],
            collision_strategy=ConcurrencyLimitStrategy(limit.get("collision_strategy", "ENQUEUE")),
        )
    return {
        "name": spec["name"],
        "schedules": schedules,
        "triggers": [TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in spec.get("triggers", [])],
        "parameters": spec.get("parameters", {}),
        "tags": spec.get("tags", []),
        "description": spec.get("description"),
        "concurrency_limit": limit,
    }


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--name",
        default="nightly-serve",
        help="deployment name to serve as (default: nightly-serve; not `nightly-retrain`, which `prefect deploy` owns)",
    )
    return parser


def serve_deployment(args: argparse.Namespace, _: None) -> int:
    """Create the deployment and run its flow runs until stopped."""
    os.chdir(REPO_ROOT)  # the entrypoint and the parameters' relative paths (data/...) are relative to it
    from prefect import serve

    from flows.cifar_flow import cifar_pipeline  # also sets the offline defaults (no telemetry)

    options = serve_options(deployment_spec("nightly-retrain")) | {"name": args.name}
    # `prefect.serve(flow.to_deployment(...))`, not `flow.serve(...)`: Prefect 3.8.8's `Flow.serve`
    # cloudpickles the flow into the run's subprocess *by value*, which loses the module globals
    # that our postponed (string) annotations need (`PipelineConfig is not fully defined`).
    # A served deployment instead starts `python -m prefect.engine`, which imports the entrypoint
    # like a worker does.
    ensure_prefect_api()
    serve(cifar_pipeline.to_deployment(**options))
    return done(f"stopped serving {options['name']}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), lambda args: None, serve_deployment, argv, what="serving the deployment")


if __name__ == "__main__":
    sys.exit(run_command(main))
