"""Which weights a training run starts from: from scratch, or (`--warm-start champion`) the champion's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cifarflow.registry.store import read_champion_version

if TYPE_CHECKING:
    from cifarflow.data.transform import Features


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


def plan_warm_start(requested: bool, registry: Path, preset: str, features: Features) -> WarmStartPlan:
    """The champion, if of this preset, normalization, classes and image size and trained on no withdrawn batch
    of `features`; RegistryDamaged."""
    if not requested:
        return WarmStartPlan()
    version = read_champion_version(registry)
    note = {"requested": "champion", "champion_id": version.model_id if version else None, "applied": False}
    normalization = features.normalization.kind
    if version is None:
        reason = "no champion yet"
    elif version.preset != preset:
        reason = f"the champion is a `{version.preset}` model, this run trains `{preset}`"
    elif version.normalization != normalization:
        reason = f"the champion's inputs were normalized as `{version.normalization}`, this run's as `{normalization}`"
    elif problem := version.data_set_difference(features.label_names, features.image_size):
        reason = f"the champion {problem}"
    elif withdrawn := sorted(set(version.batch_ids) - set(features.batch_ids)):
        reason = f"the champion was trained on withdrawn batch {', '.join(withdrawn)}"
    else:
        return WarmStartPlan(str(version.model_path), note | {"champion_version": version.name})
    return WarmStartPlan(None, note | {"reason": reason})
