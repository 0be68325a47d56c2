"""What one `add_images` run did: summary.json, report.md and a grid of the images added."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cifarflow.files import atomic_directory, atomic_path, write_json
from cifarflow.markdown import escape
from cifarflow.paths import printable

THUMBNAILS = 100  # at most this many added images in the grid (the first ones, by path)
GRID_COLUMNS = 10
THUMB_SIDE = 64  # the least a thumbnail is drawn at (nearest neighbour: the pixels themselves)


def build_summary(
    *,
    addition_id: str,
    batch_id: str | None,
    inbox: Path,
    files: int,
    screening,
    previous_version: str,
) -> dict[str, Any]:
    """summary.json less the data's version after the run (`dataset_version`, `train_images`: added on publishing)."""
    return {
        "addition_id": addition_id,
        "batch_id": batch_id,
        "inbox": printable(inbox),
        "files": files,
        "added": len(screening.accepted),
        "duplicates": len(screening.duplicates),
        "duplicate_files": screening.duplicates,
        "rejected": [r.to_json() for r in screening.rejected],
        "notes": screening.notes,
        "class_counts": screening.class_counts,
        "previous_dataset_version": previous_version,
    }


def thumbnail_grid(images: list[np.ndarray], path: Path) -> None:
    """A PNG at `path` of the first THUMBNAILS (S, S, 3) uint8 `images`, each drawn at max(THUMB_SIDE, S) px."""
    images = images[:THUMBNAILS]
    columns = min(GRID_COLUMNS, len(images))
    rows = -(-len(images) // columns)
    side = max(THUMB_SIDE, images[0].shape[0])
    grid = Image.new("RGB", (columns * side, rows * side), (255, 255, 255))
    for number, pixels in enumerate(images):
        thumb = Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST)
        grid.paste(thumb, ((number % columns) * side, (number // columns) * side))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")


def render_markdown(summary: dict[str, Any], grid: str | None) -> str:
    version = summary["dataset_version"]
    moved = version != summary["previous_dataset_version"]
    lines = [
        f"# Images added: `{summary['addition_id']}`",
        "",
        f"From {escape(summary['inbox'])}: **{summary['added']} added**, {summary['duplicates']} already in the "
        f"training data, {len(summary['rejected'])} rejected, of {summary['files']} files.",
        "",
        f"Dataset version {'`' + summary['previous_dataset_version'] + '` → ' if moved else ''}`{version}`"
        f"{'' if moved else ' (unchanged: nothing new was added)'}; {summary['train_images']:,} training images.",
        "",
    ]
    tables = (
        ("Added per class", ("class", "added"), [(name, count) for name, count in summary["class_counts"].items()]),
        ("Rejected", ("file", "reason"), [(r["path"], r["reason"]) for r in summary["rejected"]]),
        ("Decoded with a note", ("file", "note"), [(n["path"], n["note"]) for n in summary["notes"]]),
        (
            "Already present (not added again)",
            ("file", "same image as", "its class there"),
            [(d["path"], d["of"], d["label"]) for d in summary["duplicate_files"]],
        ),
    )
    for title, columns, rows in tables:
        if rows:
            lines += [f"## {title}", "", f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(escape(str(cell)) for cell in row) + " |" for row in rows]
            lines.append("")
    if grid:
        lines += ["## What was added", "", f"![added images]({grid})", ""]
    return "\n".join(lines)


def write_summary(directory: Path, summary: dict[str, Any], added_images: list[np.ndarray]) -> Path:
    """Write the addition's report directory whole; return the path of summary.json."""
    with atomic_directory(directory) as staging:
        grid = "added.png" if added_images else None
        if grid:
            thumbnail_grid(added_images, staging / grid)
        write_json(staging / "summary.json", summary)
        with atomic_path(staging / "report.md") as tmp:
            tmp.write_text(render_markdown(summary, grid))
    return directory / "summary.json"
