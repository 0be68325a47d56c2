"""The registry as a table, one row per version; a damaged version's `model` is DAMAGED, `files` its damaged file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifarflow.registry import store

COLUMNS = tuple(
    "version champion model accuracy classes size dataset trained_by_run promoted_at model_sha256 files".split()
)
DAMAGED = "DAMAGED"


def version_rows(registry: Path) -> list[dict[str, Any]]:
    """Every version, oldest first, with its class count and image size; `files` is `verified` (every file matched
    its registered sha256)."""
    champion = store.readable_champion(registry)  # a damaged alias is named among the problems
    versions, damaged = store.scan(registry)
    rows = [
        {
            "version": v.name,
            "model": v.preset,
            "accuracy": round(v.accuracy, 4),
            "classes": len(v.label_names),
            "size": f"{v.side}×{v.side}",
            "dataset": v.dataset_version,
            "trained_by_run": v.run_name,
            "promoted_at": v.promoted_at,
            "model_sha256": v.model_id[:12],
            "files": "verified",
        }
        for v in versions
    ]
    for damage in damaged:
        folder = store.versions_dir(registry) / damage.version
        inside = (
            damage.path.relative_to(folder).as_posix()
            if damage.path.is_relative_to(folder) and damage.path != folder
            else ""
        )
        rows.append(dict.fromkeys(COLUMNS, "") | {"version": damage.version, "model": DAMAGED, "files": inside})
    for row in rows:
        row["champion"] = "champion" if row["version"] == champion else ""
    return sorted(rows, key=lambda row: int(row["version"][1:]))


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table with aligned columns."""
    if not rows:
        return "no versions yet: a pipeline run registers its model when it is promoted"
    cells = [list(COLUMNS)] + [[str(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)


def alias_rows(registry: Path, last: int = 10) -> list[dict[str, Any]]:
    """The latest moves of the champion alias, newest first."""
    return [
        {k: m.get(k) for k in ("at", "from", "to", "by", "reason")} for m in store.alias_moves(registry)[-last:][::-1]
    ]
