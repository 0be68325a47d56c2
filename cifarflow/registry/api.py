"""What promotion (and a warm start) ask of the model registry, in a few verbs. How the registry keeps
its files (versions, the alias and its moves, damage) is store.py's; nothing outside the registry
needs those internals to promote a model.

Reading:
- `read_champion_version(registry)`: the champion's version, or None when there is none yet;
- `version_of_model(registry, model_id)`: the version holding a model, if it was ever registered;
- `read_results(version)`: its predictions, labels and metrics, which McNemar's test pairs;
- `alias_moves(registry)`: every move of the champion alias, oldest first (who, when, from, to, why);
- `read_decisions(registry)`: every champion/challenger decision, oldest first;
- `decisions_on_test_set(registry, test_set_sha256)`: how many of them judged a model on a test set.

Writing:
- `check_link_place(registry)`: RegistryDamaged now, before anything is written, if what stands at
  `registry/champion` would stop the alias from moving;
- `stage_next_version(...)`: the next version built in `.staging/`, exported and smoke-tested
  (VersionRejected says why not; nothing is left behind);
- `make_champion(registry, candidate, reason, expected_from)`: commit a staged version and move the
  alias to it, recorded as a move by promotion (AliasMoved if a person moved it meanwhile);
- `record_decision(registry, decision, run_name, test_set_sha256=…)`: append a decision to the log.

Every reader raises RegistryDamaged, naming the file and what to do, when what it reads is damaged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cifarflow.registry.alias import (
    UNCHECKED,
    AliasMoved,
    alias_moves,
    check_link_place,
    move_alias,
    read_champion_version,
)
from cifarflow.registry.build import Canary, StagedVersion, VersionRejected, stage_version
from cifarflow.registry.model_versions import (
    Results,
    Version,
    commit_version,
    new_staging,
    next_name,
    read_results,
    version_of_model,
)
from cifarflow.registry.records import RegistryDamaged, VersionRecord, append_line, read_lines
from cifarflow.registry.smoke import canary_indices

DECISIONS = "decisions.jsonl"


class DecisionRecord(Protocol):
    """A decision as the log records it (`cifarflow.promotion.decision.Decision`)."""

    def to_json(self) -> dict[str, Any]: ...


def stage_next_version(
    registry: Path,
    model_path: Path,
    record: VersionRecord,
    metrics: dict[str, Any],
    predictions: np.ndarray,
    labels: np.ndarray,
    canary: Canary,
    log=print,
) -> StagedVersion:
    """Build the next version (v1, v2, …) from the model file and its scores in `.staging/`: copied,
    exported, smoke-tested in a fresh process. It is not in the registry until `make_champion`
    commits it; VersionRejected (with nothing left behind) says why it cannot be."""
    name = next_name(registry)
    staging = new_staging(registry, name, log)
    return stage_version(staging, name, model_path, record, metrics, predictions, labels, canary, log)


def make_champion(
    registry: Path, candidate: StagedVersion | Version, reason: str, expected_from: object = UNCHECKED
) -> Version:
    """Commit a staged version (a `Version` is registered already) and point the champion alias at
    it, recorded as a move by promotion with `reason`. With `expected_from`, only if the champion is
    still that version (None: no champion): AliasMoved otherwise, with the version committed."""
    if isinstance(candidate, StagedVersion):
        candidate = commit_version(registry, candidate.directory, candidate.name)
    move_alias(registry, candidate.name, by="promotion", reason=reason, expected_from=expected_from)
    return candidate


def record_decision(
    registry: Path,
    decision: DecisionRecord,
    run_name: str,
    now: datetime | None = None,
    test_set_sha256: str | None = None,
) -> None:
    """Append the decision to decisions.jsonl (one line, one write: whole or absent), with the test
    set it was made on (what `read_decisions` counts a test set's use by)."""
    at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    entry = {"at": at, "run_name": run_name, "test_set_sha256": test_set_sha256} | decision.to_json()
    append_line(Path(registry) / DECISIONS, entry)


def read_decisions(registry: Path) -> list[dict[str, Any]]:
    """Every decision, oldest first (a line that is not a whole record is skipped: see store.problems)."""
    return read_lines(Path(registry) / DECISIONS)[0]


def decisions_on_test_set(registry: Path, test_set_sha256: str) -> tuple[int, int]:
    """(decisions that judged a model on this test set, decisions logged before the log named test
    sets). A challenger that already was the champion was not judged and is not counted."""
    decisions = read_decisions(registry)
    judged = sum(
        1 for d in decisions if d.get("test_set_sha256") == test_set_sha256 and d.get("reason") != "already-champion"
    )
    return judged, sum(1 for d in decisions if "test_set_sha256" not in d)


__all__ = [
    "AliasMoved",
    "Canary",
    "DecisionRecord",
    "RegistryDamaged",
    "Results",
    "StagedVersion",
    "Version",
    "VersionRecord",
    "VersionRejected",
    "alias_moves",
    "canary_indices",
    "check_link_place",
    "make_champion",
    "read_champion_version",
    "decisions_on_test_set",
    "read_decisions",
    "read_results",
    "record_decision",
    "stage_next_version",
    "version_of_model",
]
