"""What each stage would do for a configuration, without computing anything: the `--plan`
dry run, and the lookup of persisted upstream outputs when only some stages run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.cache import explain_change, key_parts, last_state
from tasks.config import PipelineConfig
from tasks.errors import StageInputMissing
from tasks.stages import SPECS, STAGES, existing_output


@dataclass(frozen=True)
class StagePlan:
    stage: str
    action: str  # "cached", "run" or "run (after upstream)"
    reason: str

    def __str__(self) -> str:
        verb = "cached" if self.action == "cached" else "will run"
        return f"{self.stage}: {verb}: {self.reason}"


def plan_stages(config: PipelineConfig, refresh: set[str] = frozenset()) -> list[StagePlan]:
    """For each stage in order: would it be reused or run, and why. Reads manifests, not data."""
    plans, upstream = [], {}
    for stage in STAGES:
        spec = SPECS[stage]
        missing = [name for name in spec.upstream if name not in upstream]
        if missing:
            plans.append(StagePlan(stage, "run", f"after {', '.join(missing)} run{'s' if len(missing) == 1 else ''}"))
            continue
        parts = key_parts(spec, config, upstream)
        found = existing_output(stage, config, parts.key)
        previous = last_state(config.layout.stage_state, stage)
        if stage in refresh:
            plans.append(StagePlan(stage, "run", "--refresh asked for it"))
        elif found is not None:
            upstream[stage] = found
            plans.append(StagePlan(stage, "cached", _cached_reason(stage, found, parts.key)))
            continue
        elif previous is not None and previous["key"] == parts.key:
            plans.append(StagePlan(stage, "run", "its output is missing or no longer matches its manifest"))
        else:
            plans.append(StagePlan(stage, "run", explain_change(previous, parts)))
    return plans


def _cached_reason(stage: str, found: Any, key: str) -> str:
    if stage == "ingest":
        return f"source sha256 {found.source_sha256[:12]}…, {sum(found.rows.values())} images"
    return f"key {key[:12]}…, output at {getattr(found, 'directory', None) or getattr(found, 'model_dir', '')}"


def persisted_upstream(config: PipelineConfig, stage: str, upstream: dict[str, Any]) -> Any:
    """The output of `stage` for this configuration, already on disk, for a run that skips it."""
    parts = key_parts(SPECS[stage], config, upstream)
    found = existing_output(stage, config, parts.key)
    if found is None:
        raise StageInputMissing(
            f"stage {stage!r} has no output for this configuration yet "
            f"({explain_change(last_state(config.layout.stage_state, stage), parts)}); "
            f"run it first, e.g. add it to --stages or run without --stages"
        )
    return found
