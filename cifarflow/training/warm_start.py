"""Which weights a training run starts from: from scratch, or (`--warm-start champion`) the champion's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cifarflow.registry.store import read_champion_version


@dataclass(frozen=True)
class WarmStartPlan:
    """`model_path`: the champion's model (None: from scratch); `note`: the model card's record (None: not asked)."""

    model_path: str | None = None
    note: dict | None = None

    @property
    def fingerprint(self) -> str:
        if self.note is None:
            return "not requested"
        return self.note["champion_id"] if self.model_path else f"none: {self.note['reason']}"


def plan_warm_start(
    requested: bool, registry: Path, preset: str, normalization: str, batch_ids: tuple[str, ...]
) -> WarmStartPlan:
    """The champion, if of this preset and normalization and trained on no withdrawn batch; RegistryDamaged."""
    if not requested:
        return WarmStartPlan()
    version = read_champion_version(registry)
    note = {"requested": "champion", "champion_id": version.model_id if version else None, "applied": False}
    if version is None:
        reason = "no champion yet"
    elif version.preset != preset:
        reason = f"the champion is a `{version.preset}` model, this run trains `{preset}`"
    elif version.normalization != normalization:
        reason = f"the champion's inputs were normalized as `{version.normalization}`, this run's as `{normalization}`"
    elif withdrawn := sorted(set(version.batch_ids) - set(batch_ids)):
        reason = f"the champion was trained on withdrawn batch {', '.join(withdrawn)}"
    else:
        return WarmStartPlan(str(version.model_path), note | {"champion_version": version.name})
    return WarmStartPlan(None, note | {"reason": reason})
