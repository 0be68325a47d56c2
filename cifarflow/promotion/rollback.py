"""A model a person rolled back from is not promoted again by a nightly run, until a person moves the
champion alias back to it: the rule, over the registry's record of the alias moves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from cifarflow.promotion.decision import Decision
from cifarflow.registry.api import alias_moves, version_of_model


def demoted_by_hand(registry: Path, model_id: str) -> dict[str, Any] | None:
    """The move *by hand* away from the version holding this model, if that is the last word a
    person said about it (a later move by hand back to it lifts the rule); None otherwise."""
    version = version_of_model(registry, model_id)
    if version is None:
        return None
    said = [m for m in alias_moves(registry) if m["by"] == "hand" and version.name in (m["from"], m["to"])]
    last = said[-1] if said else None
    return last if last and last["from"] == version.name and last["to"] != version.name else None


def respect_rollback(decision: Decision, registry: Path) -> Decision:
    """A model a person rolled back from stays out: the nightly run must not undo a rollback."""
    demotion = demoted_by_hand(registry, decision.challenger_id) if decision.promoted else None
    if demotion is None:
        return decision
    name = demotion["from"]
    return replace(
        decision,
        promoted=False,
        reason="rolled-back",
        summary=f"kept champion: this model is {name}, which was rolled back by hand on {demotion['at']} "
        f"({demotion['reason']}); `python flows/registry_flow.py promote {name}` makes it the champion again",
    )
