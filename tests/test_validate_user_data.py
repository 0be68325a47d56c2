"""The validate stage's checks for a user's data set, on tiny shards of any image size and class count: a leak
between the splits, a class without test images or with too few training images are refused naming the files
or classes; imbalance, unreadable files and duplicates within a class are warned with counts and names."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarflow.data.dataset_versions import current_version
from cifarflow.data.shards import build_manifest, pixel_digest, rows_table, write_shard
from cifarflow.files import write_json
from cifarflow.layout import DataLayout
from cifarflow.validation.checks import MIN_TRAIN_IMAGES
from cifarflow.validation.validate import DataValidationError, validate_dataset

SHAPES = [(side, classes) for side in (8, 16, 64) for classes in (3, 12)]
TRAIN, TEST = 12, 2  # images per class

Row = tuple[int, np.ndarray, str]  # label, (S, S, 3) uint8 image, file name


def photos(n: int, seed: int) -> list[Image.Image]:
    """n photo-like 128 × 128 RGB images: random 4 × 4 colour fields, bicubic-upscaled."""
    fields = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return [Image.fromarray(field).resize((128, 128), Image.BICUBIC) for field in fields]


def shrink(photo: Image.Image, side: int) -> np.ndarray:
    """(side, side, 3) uint8: the photo as ingest stores it (Lanczos down to the data set's size)."""
    return np.asarray(photo.resize((side, side), Image.LANCZOS))


def resaved(photo: Image.Image) -> Image.Image:
    """The photo saved again as a JPEG (quality 85): the same picture, other pixels."""
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=85)
    return Image.open(buffer).convert("RGB")


def data_set(side: int, classes: int) -> tuple[list[str], list[Row], list[Row], list[Image.Image]]:
    """Class names, TRAIN + TEST distinct photos per class named as a folder source names them, and the training
    rows' photos before `shrink`."""
    names = [f"kind-{k:02d}" for k in range(classes)]
    originals = photos(classes * (TRAIN + TEST), seed=side + classes)
    images = iter(shrink(photo, side) for photo in originals)
    train = [(k, next(images), f"train/{names[k]}/{i}.png") for k in range(classes) for i in range(TRAIN)]
    test = [(k, next(images), f"test/{names[k]}/{i}.png") for k in range(classes) for i in range(TEST)]
    return names, train, test, originals[: len(train)]


def write_data_dir(root: Path, names: list[str], train: list[Row], test: list[Row], skipped=()) -> DataLayout:
    """Shards and a manifest (version 2, as ingest writes them) holding the rows."""
    layout = DataLayout(root)
    shards = {}
    for split, rows in (("train", train), ("test", test)):
        labels = np.array([label for label, _, _ in rows], np.uint8)
        images = np.stack([image for _, image, _ in rows])
        table = rows_table([f"{split}-{i}" for i in range(len(rows))], [n for *_, n in rows], labels, names, images)
        (layout.parquet / split).mkdir(parents=True, exist_ok=True)
        name = f"{split}/part-00000.parquet"
        shards[split] = [write_shard(table, layout.parquet / name, name)]
    side = train[0][1].shape[0]
    source = {"kind": "folder", "uri": "/photos", "sha256": "0" * 64}
    manifest = build_manifest(shards, names, source, image_size=side, split={"method": "given"}, skipped=skipped)
    write_json(layout.shard_manifest, manifest)
    return layout


def validate(layout: DataLayout, out: Path):
    return validate_dataset(layout, current_version(layout), out, log=lambda _: None)


@pytest.mark.parametrize(("side", "classes"), SHAPES)
def test_a_clean_data_set_passes_and_soft_problems_are_warned_with_counts_and_names(tmp_path, side, classes):
    names, train, test, originals = data_set(side, classes)
    clean = validate(write_data_dir(tmp_path / "clean", names, train, test), tmp_path / "v0")
    assert clean.warnings == ()  # distinct pictures, even in one class, never count as near-duplicates
    stats = json.loads((clean.directory / "validation.json").read_text())
    assert stats["class_counts"] == dict.fromkeys(names, TRAIN)
    assert stats["test_class_counts"] == dict.fromkeys(names, TEST)
    assert (stats["exact_duplicates"], stats["near_duplicates"], stats["skipped"]) == (0, 0, [])
    assert f"{classes} classes" in (clean.directory / "validation.md").read_text()

    first, second, other = names[0], names[1], names[-1]
    copy = shrink(resaved(originals[0]), side)  # the first class's first photo, saved again as a JPEG
    assert pixel_digest(copy) != pixel_digest(train[0][1])  # other pixels: not an exact copy
    elsewhere = shrink(resaved(originals[2]), side)  # a near copy of the first class's third photo, in the second
    more = [shrink(photo, side) for photo in photos(30, seed=99)]
    extra = [
        (0, copy, f"train/{first}/resaved.jpg"),
        (0, train[1][1], f"train/{first}/again.png"),  # an exact copy in its own class
        (1, elsewhere, f"train/{second}/other-class.jpg"),
        (1, train[3][1], f"train/{second}/mislabelled.png"),  # the first class's fourth photo, under another label
        *[(classes - 1, image, f"train/{other}/more-{i}.png") for i, image in enumerate(more)],
    ]
    skipped = [{"path": f"train/{second}/broken-{i}.jpg", "reason": "cannot identify image file"} for i in range(4)]
    layout = write_data_dir(tmp_path / "messy", names, train + extra, test, skipped)
    result = validate(layout, tmp_path / "v1")
    stats = json.loads((result.directory / "validation.json").read_text())
    warnings = "\n".join(result.warnings)

    assert stats["near_duplicates"] == 1 and stats["near_duplicate_groups"] == [
        [f"train/{first}/0.png", f"train/{first}/resaved.jpg"]
    ]
    assert "near-duplicates: 1 images" in warnings and f"train/{first}/0.png ~ train/{first}/resaved.jpg" in warnings
    assert stats["exact_duplicates"] == 1
    assert (
        f"exact copies: 1 images repeat another image of their class (train/{first}/1.png = train/{first}/again.png)"
        in warnings
    )

    assert stats["label_conflicts"] == 1
    assert f"label conflicts: 1 images repeat an image of another class (train/{first}/3.png = " in warnings

    counts = [TRAIN + 2, TRAIN + 2, *[TRAIN] * (classes - 3), TRAIN + 30]  # as `extra` adds them
    least = int(np.argmin(counts))
    assert stats["class_counts"] == dict(zip(names, counts))
    assert f"class imbalance: {other} has {counts[-1]} training images, {names[least]} {counts[least]}" in warnings

    assert stats["skipped"] == skipped  # every one, with its reason
    assert f"unreadable files: ingest skipped 4: train/{second}/broken-0.jpg (cannot identify image file)" in warnings
    assert "and 1 more" in warnings
    section = (result.directory / "validation.md").read_text()
    assert f"at {side}×{side} pixels" in section and "broken-0.jpg" in section and "Unreadable files" in section


@pytest.mark.parametrize(("side", "classes"), SHAPES)
def test_leaks_and_classes_without_enough_images_are_refused_naming_them(tmp_path, side, classes):
    names, train, test, _ = data_set(side, classes)
    leaked = (1, train[TRAIN + 3][1].copy(), f"test/{names[1]}/leak.png")  # the second class's fourth photo
    layout = write_data_dir(tmp_path / "leak", names, train, [*test, leaked])
    with pytest.raises(DataValidationError) as refused:
        validate(layout, tmp_path / "v")
    message = str(refused.value)
    assert (
        f"ingested train: 1 images are exact copies of test images (train/{names[1]}/3.png = test/{names[1]}/leak.png)"
        in message
    )
    assert "remove one file of each pair" in message
    assert not (tmp_path / "v").exists()  # nothing written

    untested = [row for row in test if row[0] != classes - 1]  # the last class has no test images
    layout = write_data_dir(tmp_path / "untested", names, train, untested)
    with pytest.raises(DataValidationError, match=rf"classes with no test images: {names[-1]} \({TRAIN} training\)"):
        validate(layout, tmp_path / "v")

    few = [row for row in train if row[0] != 0 or row[2].endswith(("/0.png", "/1.png", "/2.png", "/3.png"))]
    layout = write_data_dir(tmp_path / "few", names, few, test)
    with pytest.raises(DataValidationError, match=rf"fewer than {MIN_TRAIN_IMAGES} training images: {names[0]} \(4\)"):
        validate(layout, tmp_path / "v")
    assert not (tmp_path / "v").exists()
