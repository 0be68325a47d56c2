"""Tasks of the registry flow (flows/registry_flow.py): move the champion alias by hand, publish the registry."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cifarflow.orchestration.artifacts import publish_registry
from cifarflow.orchestration.events import announce_moves
from cifarflow.paths import printable
from cifarflow.registry import store


@task(name="move-champion", cache_policy=NO_CACHE)
def move_champion(registry: Path, version: str, reason: str) -> dict:
    """Point `champion` at `version` (a rollback or roll-forward), record who moved it and why, and emit
    `cifar10.model.promoted`."""
    move = store.move_alias(registry, version, by="hand", reason=reason)
    get_run_logger().info("champion: %s → %s (%s)", move["from"], move["to"], move["reason"])
    announce_moves(printable(Path(registry).parent), registry, moved=True)  # the layout's <data dir>/registry
    return move


@task(name="publish-registry", cache_policy=NO_CACHE)
def publish_registry_artifact(registry: Path) -> None:
    """The registry's versions and latest move as a table artifact in the UI."""
    publish_registry(registry)
