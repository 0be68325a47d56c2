"""Growing the data on the full CIFAR-10 set: what the test-set leak check catches, how long adding
1,000 images takes, and how long the validate stage takes, each beside its floor in the same run.

    python benchmarks/bench_intake.py --source data/cache/cifar-10-python.tar.gz --data-dir /tmp/bench-intake

1. Leak check quality: 300 test images, each transformed (re-encoded, resized, shifted, flipped,
   cropped, brightened), must be caught; 3,000 training images (not copies of test images, except
   for CIFAR-10's own near-duplicates) and flipped/cropped training images should not be.
2. Adding 1,000 images (flipped training images saved as 96×96 JPEG and PNG files): time per phase
   against the floor of only decoding the same files with Pillow.
3. The validate stage on the full data (+ the batch) against the floor of only reading its shards.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from cifarflow.config import PipelineConfig
from cifarflow.data.dataset_versions import current_version, new_batch_id, write_batch
from cifarflow.data.ingest import ingest_source
from cifarflow.data.shards import read_split
from cifarflow.files import read_json, text_digest
from cifarflow.intake.screen import NEAR_RMS, LeakIndex, batch_table, load_reference, scan_inbox, screen_inbox
from cifarflow.layout import DataLayout
from cifarflow.validation.validate import validate_dataset


def jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def resized(a: np.ndarray, side: int) -> np.ndarray:
    big = Image.fromarray(a).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(big.resize((32, 32), Image.Resampling.LANCZOS))


def cropped(a: np.ndarray, border: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a[border:-border, border:-border]).resize((32, 32), Image.Resampling.LANCZOS))


TRANSFORMS = {
    "exact copy": lambda a: a,
    "JPEG quality 75": lambda a: jpeg(a, 75),
    "JPEG quality 50": lambda a: jpeg(a, 50),
    "JPEG quality 20": lambda a: jpeg(a, 20),
    "upscaled to 128 px": lambda a: resized(a, 128),
    "downscaled to 24 px": lambda a: resized(a, 24),
    "shifted 2 px": lambda a: np.roll(a, (2, -1), axis=(0, 1)),
    "mirrored": lambda a: a[:, ::-1],
    "mirrored + shifted + JPEG 50 + 96 px": lambda a: resized(jpeg(np.roll(a[:, ::-1], 1, axis=0), 50), 96),
    "cropped 1 px a side": lambda a: cropped(a, 1),
    "cropped 2 px a side": lambda a: cropped(a, 2),
    "brightened +10": lambda a: np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8),
}


def leak_quality(train: np.ndarray, test: np.ndarray, rng: np.random.Generator) -> None:
    index = LeakIndex.build(test, [str(i) for i in range(len(test))])
    picks = rng.choice(len(test), 300, replace=False)
    print(f"\n## Leak check (threshold {NEAR_RMS:g}): test images caught, of 300 per transform\n")
    print("| copy of a test image | caught |\n|---|---|")
    for name, transform in TRANSFORMS.items():
        found, distance = index.nearest(np.stack([transform(test[i]) for i in picks]))
        caught = np.mean((distance <= NEAR_RMS) & (found == picks))
        print(f"| {name} | {caught:.1%} |")
    sample = train[rng.choice(len(train), 3000, replace=False)]
    started = time.perf_counter()
    _, distance = index.nearest(sample)
    seconds = time.perf_counter() - started
    print("\n| training images flagged (should be few: CIFAR-10's own train/test near-duplicates) | share |\n|---|---|")
    print(f"| 3,000 training images | {np.mean(distance <= NEAR_RMS):.2%} |")
    for name in ("mirrored", "cropped 2 px a side"):
        _, d = index.nearest(np.stack([TRANSFORMS[name](a) for a in sample[:1000]]))
        print(f"| 1,000 training images, {name} | {np.mean(d <= NEAR_RMS):.2%} |")
    print(f"\nleak check speed: {3000 / seconds:,.0f} images/s against 10,000 test images ({seconds:.1f} s for 3,000)")


def write_inbox(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    for i, (pixels, label) in enumerate(zip(images, labels)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(pixels[:, ::-1]).resize((96, 96), Image.Resampling.BICUBIC)
        picture.save(folder / f"{i:04d}.{'jpg' if i % 2 else 'png'}")


def time_addition(layout: DataLayout, train: np.ndarray, labels: np.ndarray, names: list[str], count: int) -> None:
    inbox = Path(tempfile.mkdtemp(prefix="inbox-"))
    pick = np.random.default_rng(1).choice(len(train), count, replace=False)
    write_inbox(inbox, train[pick], labels[pick], names)
    files = sorted(inbox.rglob("*.*"))
    started = time.perf_counter()
    for path in files:  # the floor: decoding alone
        with Image.open(path) as image:
            image.convert("RGB").resize((32, 32))
    floor = time.perf_counter() - started
    phases = {}
    started = time.perf_counter()
    found = scan_inbox(inbox, names)
    phases["scan"] = time.perf_counter() - started
    started = time.perf_counter()
    reference = load_reference(layout)
    phases["load test + training images (reference)"] = time.perf_counter() - started
    started = time.perf_counter()
    screening = screen_inbox(found, reference, log=lambda _: None)
    phases["decode + leak check + duplicates"] = time.perf_counter() - started
    started = time.perf_counter()
    batch_id = new_batch_id(text_digest([a.digest for a in screening.accepted]))
    write_batch(layout, batch_id, batch_table(screening.accepted, names), {"class_counts": screening.class_counts})
    phases["write the batch"] = time.perf_counter() - started
    total = sum(phases.values())
    print(f"\n## Adding {count:,} images (96×96 PNG and JPEG files)\n")
    print("| phase | seconds |\n|---|---|")
    for name, seconds in phases.items():
        print(f"| {name} | {seconds:.2f} |")
    print(f"| **total** | **{total:.2f}** ({count / total:,.0f} images/s) |")
    print(f"| floor: only decoding the files with Pillow | {floor:.2f} (total is {total / floor:.1f}× the floor) |")
    print(
        f"\nadded {len(screening.accepted)}, duplicates {len(screening.duplicates)}, rejected {len(screening.rejected)}"
    )


def time_validation(layout: DataLayout) -> None:
    version = current_version(layout)
    out = Path(tempfile.mkdtemp(prefix="validation-"))
    started = time.perf_counter()
    validate_dataset(layout, version, out / "v", log=lambda _: None)
    seconds = time.perf_counter() - started
    dataset = read_json(out / "v" / "dataset.json")
    started = time.perf_counter()
    for shards in dataset["splits"].values():
        for shard in shards:
            pq.read_table(shard["path"])
    floor = time.perf_counter() - started
    print(f"\n## Validate stage on {version.train_images:,} training + {version.test_images:,} test images\n")
    print(f"validate: {seconds:.2f} s; floor (only reading the shards): {floor:.2f} s ({seconds / floor:.1f}×)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="data/cache/cifar-10-python.tar.gz")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/bench-intake"))
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    layout = DataLayout(args.data_dir.resolve())
    if not layout.shard_manifest.is_file():
        ingest_source(PipelineConfig(source=args.source, data_dir=layout.root))
    for batch in current_version(layout).batches:  # start from the ingested data each time
        shutil.rmtree(batch.directory)
    train, labels = read_split(layout.shard_manifest, "train")
    test, _ = read_split(layout.shard_manifest, "test")
    names = read_json(layout.shard_manifest)["label_names"]
    leak_quality(train, test, np.random.default_rng(0))
    time_addition(layout, train, labels, names, args.images)
    time_validation(layout)


if __name__ == "__main__":
    main()
