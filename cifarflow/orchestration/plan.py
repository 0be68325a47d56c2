"""What each stage would do for a configuration, without computing anything: the `--plan` dry run."""

from __future__ import annotations

from dataclasses import dataclass

from cifarflow.config import PipelineConfig
from cifarflow.data.ingest import IngestResult
from cifarflow.orchestration.cache import explain_change, key_parts, last_state
from cifarflow.orchestration.stages import SPECS, STAGES
from cifarflow.outputs import StageOutput


@dataclass(frozen=True)
class StagePlan:
    stage: str
    action: str  # "cached" or "run"
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
        inputs = spec.resolve_inputs(config, upstream)
        parts = key_parts(spec, config, inputs)
        found = spec.find(config, parts.key, inputs)
        previous = last_state(config.layout.stage_state, stage)
        if stage in refresh:
            plans.append(StagePlan(stage, "run", "--refresh asked for it"))
        elif found is not None:
            upstream[stage] = found
            plans.append(StagePlan(stage, "cached", _cached_reason(found, parts.key)))
        elif previous is not None and previous["key"] == parts.key:
            plans.append(StagePlan(stage, "run", "its output is missing or no longer matches its manifest"))
        else:
            plans.append(StagePlan(stage, "run", explain_change(previous, parts)))
    return plans


def _cached_reason(found: StageOutput, key: str) -> str:
    if isinstance(found, IngestResult):  # the shards: what a person recognizes is the archive
        return f"source sha256 {found.source_sha256[:12]}…, {sum(found.rows.values())} images"
    return f"key {key[:12]}…, output at {found.location}"
