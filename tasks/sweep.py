"""Hyper-parameter sweeps, the pure part: a search space → trial configurations, and trial outcomes →
a leaderboard (Markdown, JSON, an accuracy-vs-training-time plot). No Prefect and no TensorFlow here;
`flows/sweep_flow.py` runs the trials on a Dask cluster.

A search space is a YAML or JSON file (or the same thing built from command-line options):

    name: lr-scan              # optional; default: "sweep-" + a digest of the trials
    base:                      # optional: fixed PipelineConfig fields for every trial
      epochs: 2
    grid:                      # every combination of these values is a trial
      model: [seed]
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
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tasks.config import PipelineConfig
from tasks.errors import PipelineInputError
from tasks.files import atomic_path, text_digest, write_json

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
            config = PipelineConfig.model_validate(base.model_dump() | overrides)
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


# ------------------------------------- the leaderboard --------------------------------------


@dataclass(frozen=True)
class TrialOutcome:
    trial: Trial
    status: str  # "completed", "cached" or "failed"
    states: dict[str, str]  # stage → Prefect state name ("Completed", "Cached", "Failed", ...)
    test_accuracy: float | None = None
    test_loss: float | None = None
    train_seconds: float | None = None
    report_dir: str | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status != "failed"


def leaderboard_rows(outcomes: list[TrialOutcome]) -> list[dict[str, Any]]:
    """Finished trials by test accuracy (best first), then the failed ones in trial order."""
    done = sorted((o for o in outcomes if o.succeeded), key=lambda o: -(o.test_accuracy or 0.0))
    failed = [o for o in outcomes if not o.succeeded]
    rows = []
    for rank, o in enumerate(done + failed, start=1):
        c = o.trial.config
        rows.append(
            {
                "rank": rank if o.succeeded else None,
                "trial": o.trial.name,
                "status": o.status,
                "test_accuracy": _round(o.test_accuracy),
                "test_loss": _round(o.test_loss),
                "train_seconds": _round(o.train_seconds, 2),
                "model": c.model,
                "epochs": c.train_epochs,
                "batch_size": c.train_batch_size,
                "learning_rate": c.train_learning_rate,
                "seed": c.seed,
                **{k: v for k, v in o.trial.overrides.items() if k not in NAMED_AXES},
                "report": o.report_dir,
                "error": o.error,
            }
        )
    return rows


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def render_leaderboard(name: str, rows: list[dict[str, Any]], plot_file: str | None) -> str:
    finished = [r for r in rows if r["status"] != "failed"]
    lines = [
        f"# Sweep `{name}`",
        "",
        f"{len(rows)} trials: {len(finished)} finished, {len(rows) - len(finished)} failed.",
    ]
    if finished:
        best = finished[0]
        lines.append(f"Best: **{best['trial']}**, test accuracy {best['test_accuracy']:.4f}.")
    lines += [
        "",
        "| rank | trial | status | test accuracy | test loss | train s | model | epochs | batch | lr | seed | report |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def show(value, fmt="{}"):
            return "–" if value is None else fmt.format(value)

        report = f"[{Path(r['report']).name}]({r['report']})" if r["report"] else "–"
        status = r["status"] if r["status"] != "failed" else "**failed**"
        lines.append(
            f"| {show(r['rank'])} | {r['trial']} | {status} | {show(r['test_accuracy'], '{:.4f}')} "
            f"| {show(r['test_loss'], '{:.4f}')} | {show(r['train_seconds'], '{:.1f}')} | {r['model']} | {r['epochs']} "
            f"| {r['batch_size']} | {r['learning_rate']:g} | {r['seed']} | {report} |"
        )
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "## Failed trials", ""] + [f"- `{r['trial']}`: {r['error']}" for r in errors]
    if plot_file:
        lines += ["", f"![accuracy against training time]({plot_file})"]
    lines.append(
        "\n_status `cached`: the trial's model and evaluation were reused from an earlier run "
        "(train seconds are those of that run)._"
    )
    return "\n".join(lines) + "\n"


def plot_leaderboard(name: str, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Test accuracy against training time, one labelled point per finished trial."""
    points = [r for r in rows if r["status"] != "failed" and r["test_accuracy"] is not None]
    if not points:
        return None
    from tasks.plots import _save, plt  # the project's headless (Agg) matplotlib setup

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["train_seconds"] for r in points], [r["test_accuracy"] for r in points], color="tab:blue")
    for r in points:
        ax.annotate(
            r["trial"], (r["train_seconds"], r["test_accuracy"]), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    failed = len(rows) - len(points)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Sweep {name}: {len(points)} trials" + (f" ({failed} failed, not shown)" if failed else ""))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def write_leaderboard(directory: Path, name: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Path]:
    """leaderboard.md, leaderboard.json and accuracy_vs_time.png in `directory` (each written atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    plot = plot_leaderboard(name, rows, directory / "accuracy_vs_time.png")
    markdown = directory / "leaderboard.md"
    with atomic_path(markdown) as tmp:
        tmp.write_text(render_leaderboard(name, rows, plot.name if plot else None))
    data = write_json(directory / "leaderboard.json", {"name": name, "trials": rows} | extra)
    return {"markdown": markdown, "json": data} | ({"plot": plot} if plot else {})
