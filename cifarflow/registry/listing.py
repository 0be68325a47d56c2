"""The registry as a table: one row per version, for `registry.py list` and the Prefect artifact.
A damaged version keeps its row, marked `DAMAGED` with the damaged file in `files`; `store.problems`
says what is wrong and what to do. `files` is `verified` for a version whose every file matched the
sha256 recorded at registration, `unverified` for one registered before digests were recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifarflow.registry import store

COLUMNS = (
    "version",
    "champion",
    "model",
    "accuracy",
    "dataset",
    "trained_by_run",
    "promoted_at",
    "model_sha256",
    "files",
)
DAMAGED = "DAMAGED"


def version_rows(registry: Path) -> list[dict[str, Any]]:
    """Every version, oldest first; a damaged one with `model` DAMAGED, its name and the damaged file."""
    try:
        champion = store.champion_name(registry)
    except store.RegistryDamaged:
        champion = None  # listed among the problems
    found = store.scan(registry)
    rows = [
        {
            "version": version.name,
            "champion": "champion" if version.name == champion else "",
            "model": version.preset,
            "accuracy": round(version.accuracy, 4),
            "dataset": version.dataset_version,
            "trained_by_run": version.run_name,
            "promoted_at": version.promoted_at,
            "model_sha256": version.model_id[:12],
            "files": "unverified" if version.record.files is None else "verified",
        }
        for version in found.versions
    ]
    rows += [
        dict.fromkeys(COLUMNS, "")
        | {
            "version": damage.version,
            "champion": "champion" if damage.version == champion else "",
            "model": DAMAGED,
            "files": _inside(damage.path, store.versions_dir(registry) / damage.version),
        }
        for damage in found.damaged
    ]
    return sorted(rows, key=lambda row: int(row["version"][1:]))


def _inside(path: Path, directory: Path) -> str:
    """The damaged file's path in its version folder (`export/saved_model.pb`), or "" for the folder."""
    return path.relative_to(directory).as_posix() if path.is_relative_to(directory) and path != directory else ""


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table with aligned columns (what `registry.py list` prints)."""
    if not rows:
        return "no versions yet: a pipeline run registers its model when it is promoted"
    cells = [list(COLUMNS)] + [[str(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)


def alias_rows(registry: Path, last: int = 10) -> list[dict[str, Any]]:
    """The latest moves of the champion alias, newest first."""
    moves = store.alias_moves(registry)[-last:][::-1]
    return [{k: m.get(k) for k in ("at", "from", "to", "by", "reason")} for m in moves]
