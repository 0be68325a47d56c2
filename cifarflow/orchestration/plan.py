"""What each stage would do for a configuration, without computing anything: the `--plan` dry run."""

from __future__ import annotations

from cifarflow.config import PipelineConfig
from cifarflow.data.ingest import IngestResult
from cifarflow.orchestration.cache import explain_change, key_parts, last_state
from cifarflow.orchestration.stages import SPECS, STAGES


def plan_stages(config: PipelineConfig, refresh: set[str] = frozenset()) -> list[str]:
    """One line per stage, `<stage>: cached: <why>` or `<stage>: will run: <why>`; reads manifests, never arrays."""
    plans, upstream = [], {}
    for stage in STAGES:
        spec = SPECS[stage]
        missing = [name for name in spec.upstream if name not in upstream]
        if missing:
            plans.append(f"{stage}: will run: after {', '.join(missing)} run{'s' if len(missing) == 1 else ''}")
            continue
        inputs = spec.resolve_inputs(config, upstream)
        parts = key_parts(spec, config, inputs)
        found = spec.on_disk(config, parts.key, inputs)
        previous = last_state(config.layout.stage_state, stage)
        if stage in refresh:
            plans.append(f"{stage}: will run: --refresh asked for it")
        elif found is not None:
            upstream[stage] = found
            if isinstance(found, IngestResult):  # the shards: what a person recognizes is the archive
                why = f"source sha256 {found.source_sha256[:12]}…, {sum(found.rows.values())} images"
            else:
                why = f"key {parts.key[:12]}…, output at {found.location}"
            plans.append(f"{stage}: cached: {why}")
        elif previous is not None and previous["key"] == parts.key:
            plans.append(f"{stage}: will run: its output is missing or no longer matches its manifest")
        else:
            plans.append(f"{stage}: will run: {explain_change(previous, parts)}")
    return plans
