"""A model a person rolled back from is not promoted again by a nightly run until a person moves the champion back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from cifarflow.promotion.decision import Decision
from cifarflow.registry.store import alias_moves, version_of_model


def demoted_by_hand(registry: Path, model_id: str) -> dict[str, Any] | None:
    """The move by hand away from this model's version, if no later move by hand returned to it; else None."""
    version = version_of_model(registry, model_id)
    if version is None:
        return None
    said = [m for m in alias_moves(registry) if m["by"] == "hand" and version.name in (m["from"], m["to"])]
    last = said[-1] if said else None
    return last if last and last["from"] == version.name and last["to"] != version.name else None


def respect_rollback(decision: Decision, registry: Path) -> Decision:
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
