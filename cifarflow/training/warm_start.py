"""Which weights a training run starts from: from scratch, or (`--warm-start champion`) from the
champion's, when that champion can serve this run. Resolved once per run, by the train stage's
spec (`cifarflow.orchestration.stages`), which hands the plan to the train task and puts its
fingerprint in the stage's cache key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cifarflow.registry.api import read_champion_version


@dataclass(frozen=True)
class WarmStartPlan:
    """`model_path`: the champion's model file to start from (None: from scratch). `note`: what the
    model card records (`requested`, `champion_id`, `applied`, and `reason` or `champion_version`);
    None when no warm start was asked for."""

    model_path: str | None = None
    note: dict | None = None

    @property
    def fingerprint(self) -> str:
        """What the trained model depends on: the champion's model id, or why none serves."""
        if self.note is None:
            return "not requested"
        return self.note["champion_id"] if self.model_path else f"none: {self.note['reason']}"


def plan_warm_start(
    requested: bool, registry: Path, preset: str, normalization: str, batch_ids: tuple[str, ...]
) -> WarmStartPlan:
    """Only a champion of the same preset, trained under the same kind of fitted transform and on data
    that is all still in the training set (no withdrawn batch), can serve; the trainer then also
    checks the weights shape by shape (`callbacks.WarmStart`). RegistryDamaged when the champion is
    damaged."""
    if not requested:
        return WarmStartPlan()
    version = read_champion_version(registry)
    note = {"requested": "champion", "champion_id": version.model_id if version else None, "applied": False}
    if version is None:
        return WarmStartPlan(None, note | {"reason": "no champion yet"})
    if version.preset != preset:
        return WarmStartPlan(
            None, note | {"reason": f"the champion is a `{version.preset}` model, this run trains `{preset}`"}
        )
    if version.normalization != normalization:
        reason = f"the champion's inputs were normalized as `{version.normalization}`, this run's as `{normalization}`"
        return WarmStartPlan(None, note | {"reason": reason})
    withdrawn = sorted(set(version.batch_ids) - set(batch_ids))
    if withdrawn:
        return WarmStartPlan(
            None, note | {"reason": f"the champion was trained on withdrawn batch {', '.join(withdrawn)}"}
        )
    return WarmStartPlan(str(version.model_path), note | {"champion_version": version.name})
