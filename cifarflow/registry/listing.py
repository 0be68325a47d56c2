"""The registry as a table: one row per version, for `registry.py list` and the Prefect artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifarflow.registry import store

COLUMNS = ("version", "champion", "model", "accuracy", "dataset", "trained_by_run", "promoted_at", "model_sha256")


def version_rows(registry: Path) -> list[dict[str, Any]]:
    champion = store.champion_name(registry)
    return [
        {
            "version": version.name,
            "champion": "champion" if version.name == champion else "",
            "model": version.record["model"],
            "accuracy": round(version.accuracy, 4),
            "dataset": version.record.get("dataset_sha256", ""),
            "trained_by_run": version.record.get("run_name", ""),
            "promoted_at": version.record.get("promoted_at", ""),
            "model_sha256": version.model_id[:12],
        }
        for version in store.list_versions(registry)
    ]


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
