"""A contact sheet of predictions: each image enlarged, with its predicted class and probability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cifarflow.files import atomic_path

SHEET_IMAGES = 100  # the first images scored; a sheet of thousands helps nobody
COLUMNS = 10
SIDE = 96  # the least a cell's image is drawn at (nearest neighbour: the pixels the model saw)
CAPTION = 28


def contact_sheet(images: list[np.ndarray], rows: list[dict], path: Path) -> Path:
    """A PNG at `path` of (S, S, 3) uint8 `images`, each drawn at max(SIDE, S) px, with its row's label and file."""
    columns = min(COLUMNS, len(images))
    lines = -(-len(images) // columns)
    side = max(SIDE, images[0].shape[0])
    cell = (side + 8, side + CAPTION)
    sheet = Image.new("RGB", (columns * cell[0], lines * cell[1]), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for number, (pixels, row) in enumerate(zip(images, rows)):
        x, y = (number % columns) * cell[0] + 4, (number // columns) * cell[1] + 2
        sheet.paste(Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST), (x, y))
        draw.text((x, y + side + 2), f"{row['label']} {row['probability']:.0%}", fill=(0, 0, 0))
        draw.text((x, y + side + 14), Path(row["path"]).name[:16], fill=(110, 110, 110))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)
