"""Hyper-parameter sweeps, the pure part: a search space → trial configurations (the leaderboard is in
`leaderboard.py`). No Prefect and no TensorFlow here; `flows/sweep_flow.py` runs the trials on Dask.

A search space is a YAML or JSON file (or the same thing built from command-line options):

    name: lr-scan              # optional; default: "sweep-" + a digest of the trials
    base:                      # optional: fixed PipelineConfig fields for every trial
      epochs: 2
    grid:                      # every combination of these values is a trial
      model: [classic]
      learning_rate: [0.001, 0.0003]
      batch_size: [32, 64]
      seed: [42]
    trials:                    # optional: extra, explicit trials (fields not given come from base)
      - {learning_rate: 0.01, epochs: 1}

Only per-trial fields may vary (model, epochs, batch_size, learning_rate, seed and whatever training
field PipelineConfig grows); the data fields (source, normalization, shards, data dir) are the sweep's
own, so ingest and preprocess run once and every trial reads the same features.
"""

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

# Fields every trial shares: they decide the features, so changing them per trial would mean one
# ingest/preprocess per trial. Everything else in PipelineConfig is a trial axis.
DATA_FIELDS = ("source", "sha256", "md5", "data_dir", "rows_per_shard", "normalization")
SPACE_KEYS = {"name", "base", "grid", "trials"}
NAMED_AXES = ("model", "learning_rate", "epochs", "batch_size", "seed")  # always in names and tables


def trial_fields() -> tuple[str, ...]:
    return tuple(name for name in PipelineConfig.model_fields if name not in DATA_FIELDS)


@dataclass(frozen=True)
class Trial:
    name: str  # short, unique within the sweep, e.g. "03-seed-lr0.001-e2-b64-s42"
    overrides: dict[str, Any]  # the trial's fields, as given in the space
    config: PipelineConfig


# ------------------------------------ the search space -------------------------------------


def load_space(path: str | Path) -> dict[str, Any]:
    """Read a search space from YAML (.yaml/.yml) or JSON; check its shape, not yet its values."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise PipelineInputError(f"cannot read search space {path}: {error}") from None
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            space = yaml.safe_load(text) or {}
        else:
            space = json.loads(text)
    except Exception as error:  # yaml.YAMLError, json.JSONDecodeError
        raise PipelineInputError(
            f"search space {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {error}"
        ) from None
    return check_space(space, str(path))


def check_space(space: Any, where: str = "search space") -> dict[str, Any]:
    if not isinstance(space, dict):
        raise PipelineInputError(f"{where}: expected a mapping with keys {sorted(SPACE_KEYS)}")
    unknown = set(space) - SPACE_KEYS
    if unknown:
        raise PipelineInputError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SPACE_KEYS)}")
    grid = space.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise PipelineInputError(f"{where}: 'grid' must map field names to non-empty lists of values")
    trials = space.get("trials") or []
    if not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
        raise PipelineInputError(f"{where}: 'trials' must be a list of mappings")
    if not isinstance(space.get("base") or {}, dict):
        raise PipelineInputError(f"{where}: 'base' must be a mapping of PipelineConfig fields")
    allowed = set(trial_fields())
    for field in set(grid).union(space.get("base") or {}, *trials):
        if field not in allowed:
            why = "is shared by all trials (set it on the sweep)" if field in DATA_FIELDS else "is not a config field"
            raise PipelineInputError(f"{where}: '{field}' {why}; trial fields are: {', '.join(sorted(allowed))}")
    return {"name": space.get("name"), "base": dict(space.get("base") or {}), "grid": dict(grid), "trials": trials}


def merge_space(space: dict[str, Any] | None, grid: dict[str, list], name: str | None = None) -> dict[str, Any]:
    """The file's space with command-line axes on top: an axis given on the command line replaces the file's."""
    merged = check_space(space or {})
    merged["grid"] = merged["grid"] | {k: v for k, v in grid.items() if v}
    merged["name"] = name or merged["name"]
    return check_space(merged, "search space (file + command line)")


def expand_space(space: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials' overrides: the grid's cartesian product, then the explicit trials; duplicates dropped."""
    grid = space["grid"]
    axes = [name for name in trial_fields() if name in grid]  # a stable order: PipelineConfig's
    combos = [dict(zip(axes, values)) for values in itertools.product(*(grid[a] for a in axes))] if axes else []
    explicit = [dict(t) for t in space["trials"]]
    if not combos and not explicit:
        combos = [{}]  # no axes at all: one trial of the base configuration
    out, seen = [], set()
    for overrides in combos + explicit:
        overrides = space["base"] | overrides
        key = json.dumps(overrides, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(overrides)
    return out


def build_trials(base: PipelineConfig, space: dict[str, Any]) -> list[Trial]:
    """One validated PipelineConfig per trial: `base` with the trial's fields replaced (validated, unlike
    `model_copy(update=...)`, so a bad value or a string from the command line is caught or coerced here)."""
    trials, problems = [], []
    for index, overrides in enumerate(expand_space(space), start=1):
        try:
            # model_copy does not validate: build through the model so bad values are rejected here
            # every trial reads the sweep's one feature set, so the normalization is the base config's
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


def trial_name(index: int, config: PipelineConfig, overrides: dict[str, Any]) -> str:
    parts = [
        f"{index:02d}",
        config.model,
        f"lr{config.train_learning_rate:g}",
        f"e{config.train_epochs}",
        f"b{config.train_batch_size}",
        f"s{config.seed}",
    ]
    parts += [f"{k}{v}" for k, v in overrides.items() if k not in NAMED_AXES]
    return "-".join(str(p) for p in parts)


def sweep_name(space_name: str | None, trials: list[Trial]) -> str:
    """A name safe for paths and Prefect artifact keys; by default the same for the same trials."""
    name = space_name or "sweep-" + text_digest([t.overrides for t in trials])[:8]
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not slug:
        raise PipelineInputError(f"sweep name {name!r} has no letters or digits")
    return slug
