"""Build a demo inbox for `flows/add_images.py` from an ingested data dir: new labeled images plus the
bad files a real inbox holds, so every outcome of an addition can be seen on the real data.

    python benchmarks/make_demo_inbox.py --data-dir data --out incoming --new 200

New images are training images mirrored and cropped by 3 px a side, saved as 96×96 PNG or JPEG
(CIFAR-10 has no unlabeled extra images; these are new pixels with true labels). Then: copies of
test images (exact, re-encoded and upscaled, shifted) that must be refused as leaks; training images
saved unchanged (duplicates); truncated, empty and fake image files; an unknown class folder; a file
outside any class folder; a decompression bomb (a 400-megapixel PNG of a few kilobytes).
"""

from __future__ import annotations

import argparse
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from cifarflow.data.shards import read_split
from cifarflow.files import read_json
from cifarflow.layout import DataLayout


def bomb_png(path: Path, side: int = 20_000) -> None:
    """A valid grayscale PNG of side×side black pixels, compressed to a few kilobytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("incoming"))
    parser.add_argument("--new", type=int, default=200, help="new images (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    layout = DataLayout(args.data_dir.resolve())
    names = read_json(layout.shard_manifest)["label_names"]
    train, train_labels = read_split(layout.shard_manifest, "train")
    test, test_labels = read_split(layout.shard_manifest, "test")
    rng = np.random.default_rng(args.seed)
    out = args.out

    def save(pixels: np.ndarray, label: int, name: str, size: int | None = None) -> Path:
        folder = out / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels)
        (image.resize((size, size), Image.Resampling.BICUBIC) if size else image).save(folder / name)
        return folder / name

    for n, i in enumerate(rng.choice(len(train), args.new, replace=False)):
        new = np.asarray(Image.fromarray(train[i][3:-3, 3:-3, :][:, ::-1]).resize((32, 32), Image.Resampling.BICUBIC))
        last_new = save(new, train_labels[i], f"new-{n:04d}.{'png' if n % 2 else 'jpg'}", 96)
    for n, i in enumerate(rng.choice(len(test), 30, replace=False)):
        kind = ("exact", "upscaled", "shifted")[n % 3]
        pixels = np.roll(test[i], 2, axis=1) if kind == "shifted" else test[i]
        save(
            pixels,
            test_labels[i],
            f"test-copy-{kind}-{n:02d}.{'jpg' if kind == 'upscaled' else 'png'}",
            128 if kind == "upscaled" else None,
        )
    for n, i in enumerate(rng.choice(len(train), 20, replace=False)):
        save(train[i], train_labels[i], f"already-have-{n:02d}.png")
    cat = out / "cat"
    cat.mkdir(parents=True, exist_ok=True)
    whole = last_new.read_bytes()
    (cat / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "notes.jpg").write_text("this is a text file with an image's name")
    (cat / "labels.csv").write_text("file,label\n")
    bomb_png(cat / "bomb.png")
    (out / "unicorn").mkdir(exist_ok=True)
    Image.fromarray(train[1]).save(out / "unicorn" / "u.png")
    Image.fromarray(train[2]).save(out / "stray.png")
    files = sum(1 for p in out.rglob("*") if p.is_file())
    print(f"wrote {files} files under {out}")


if __name__ == "__main__":
    main()
