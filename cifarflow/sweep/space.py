"""A sweep's search space → trial configurations (pure). A space (YAML/JSON file, e.g. `sweeps/classic-lr-scan.yaml`,
or options) has `name`, `base` (fields all trials share), `grid` (every combination is a trial) and `trials`
(explicit ones). `DATA_FIELDS` are the sweep's: every trial reads the same features."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cifarflow.config import PipelineConfig
from cifarflow.errors import PipelineInputError
from cifarflow.files import text_digest

# Fields every trial shares (they decide the features); every other PipelineConfig field is a trial axis.
DATA_FIELDS = ("source", "sha256", "md5", "data_dir", "rows_per_shard", "normalization")
SPACE_KEYS = {"name", "base", "grid", "trials"}
NAMED_AXES = ("model", "learning_rate", "epochs", "batch_size", "seed")  # always in names and tables


@dataclass(frozen=True)
class Trial:
    name: str  # short, unique within the sweep, e.g. "03-seed-lr0.001-e2-b64-s42"
    overrides: dict[str, Any]  # the trial's fields, as given in the space
    config: PipelineConfig


def load_space(path: str | Path) -> dict[str, Any]:
    """A search space from a YAML or JSON file, its shape checked (not yet its values); PipelineInputError."""
    import yaml  # YAML 1.2 is a superset of JSON

    try:
        space = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise PipelineInputError(f"cannot read search space {path}: {error}") from None
    return check_space(space, str(path))


def check_space(space: Any, where: str = "search space") -> dict[str, Any]:
    if not isinstance(space, dict):
        raise PipelineInputError(f"{where}: expected a mapping with keys {sorted(SPACE_KEYS)}")
    unknown = set(space) - SPACE_KEYS
    if unknown:
        raise PipelineInputError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SPACE_KEYS)}")
    base, grid, trials = space.get("base") or {}, space.get("grid") or {}, space.get("trials") or []
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise PipelineInputError(f"{where}: 'grid' must map field names to non-empty lists of values")
    if not isinstance(base, dict) or not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
        raise PipelineInputError(f"{where}: 'base' must be a mapping and 'trials' a list of mappings of config fields")
    allowed = [name for name in PipelineConfig.model_fields if name not in DATA_FIELDS]
    for field in set(grid).union(base, *trials):
        if field not in allowed:
            why = "is shared by all trials (set it on the sweep)" if field in DATA_FIELDS else "is not a config field"
            raise PipelineInputError(f"{where}: '{field}' {why}; trial fields are: {', '.join(sorted(allowed))}")
    return {"name": space.get("name"), "base": dict(base), "grid": dict(grid), "trials": trials}


def merge_space(space: dict[str, Any] | None, grid: dict[str, list], name: str | None = None) -> dict[str, Any]:
    """The file's space with command-line axes on top: an axis given on the command line replaces the file's."""
    merged = check_space(space or {})
    merged["grid"] = merged["grid"] | {k: v for k, v in grid.items() if v}
    merged["name"] = name or merged["name"]
    return check_space(merged, "search space (file + command line)")


def expand_space(space: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials' overrides: the grid's cartesian product, then the explicit trials; duplicates dropped."""
    grid = space["grid"]
    axes = [name for name in PipelineConfig.model_fields if name in grid]  # a stable order: PipelineConfig's
    combos = [dict(zip(axes, values)) for values in itertools.product(*(grid[a] for a in axes))] if axes else []
    explicit = [dict(t) for t in space["trials"]]
    if not combos and not explicit:
        combos = [{}]  # no axes at all: one trial of the base configuration
    trials = [space["base"] | overrides for overrides in combos + explicit]
    return list({json.dumps(t, sort_keys=True, default=str): t for t in trials}.values())  # the first of equals


def build_trials(base: PipelineConfig, space: dict[str, Any]) -> list[Trial]:
    """One validated config per trial (`base` with its fields); PipelineInputError naming every invalid trial."""
    trials, problems = [], []
    for index, overrides in enumerate(expand_space(space), start=1):
        try:
            # validated (model_copy is not); every trial reads the sweep's features: the base's normalization
            shared = base.model_dump() | {"normalization": base.resolved_normalization}
            config = PipelineConfig.model_validate(shared | overrides)
        except ValidationError as error:
            problems.append(f"trial {overrides}: " + "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in error.errors()))
            continue
        trials.append(Trial(trial_name(index, config, overrides), overrides, config))
    if problems:
        raise PipelineInputError("invalid search space:\n  " + "\n  ".join(problems))
    if not trials:
        raise PipelineInputError("the search space has no trials")
    return trials


def trial_name(index: int, c: PipelineConfig, overrides: dict[str, Any]) -> str:
    parts = [f"{index:02d}-{c.model}-lr{c.train_learning_rate:g}-e{c.train_epochs}-b{c.train_batch_size}-s{c.seed}"]
    return "-".join(parts + [f"{k}{v}" for k, v in overrides.items() if k not in NAMED_AXES])


def sweep_name(space_name: str | None, trials: list[Trial]) -> str:
    """A name safe for paths and Prefect artifact keys; by default the same for the same trials."""
    name = space_name or "sweep-" + text_digest([t.overrides for t in trials])[:8]
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not slug:
        raise PipelineInputError(f"sweep name {name!r} has no letters or digits")
    return slug
