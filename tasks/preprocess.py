"""Stage 2, preprocess: shards → normalized float32 features and one-hot labels on disk.

Features are `.npy` rather than Parquet because the trainer memory-maps them: loading is a
page-cache read with no decoding, and a run that only evaluates touches just the test arrays.
Besides the float32 arrays (the contract: pixels in [0, 1] or standardized) each split keeps
its uint8 pixels, which input pipelines that normalize on the fly read at a quarter the size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.errors import ShardError
from tasks.files import atomic_directory, file_digest, read_json, text_digest, write_json
from tasks.shards import SPLITS, read_split, verify_manifest

NUM_CLASSES = 10
CHUNK_ROWS = 5_000  # normalize in chunks so no full float32 copy sits beside the uint8 one


def normalize(images: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> np.ndarray:
    """uint8 images → float32: /255, then per-channel (x - mean) / std when given."""
    scaled = images.astype(np.float32) / np.float32(255.0)
    if mean is not None and std is not None:
        scaled = (scaled - mean.astype(np.float32)) / std.astype(np.float32)
    return scaled


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of images scaled to [0, 1], computed in float64 chunks."""
    total = np.zeros(3)
    squares = np.zeros(3)
    for start in range(0, len(images), CHUNK_ROWS):
        chunk = images[start : start + CHUNK_ROWS].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 1, 2))
        squares += np.square(chunk).sum(axis=(0, 1, 2))
    count = len(images) * images.shape[1] * images.shape[2]
    mean = total / count
    return mean, np.sqrt(squares / count - mean**2)


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    encoded = np.zeros((labels.size, num_classes), np.float32)
    encoded[np.arange(labels.size), labels] = 1.0
    return encoded


@dataclass(frozen=True)
class Features:
    """Where one preprocessed feature set lives and the hash that pins it."""

    directory: Path
    features_sha256: str
    label_names: list[str]
    normalization: str

    @property
    def fingerprint(self) -> str:
        return self.features_sha256


def _write_split(out: Path, split: str, images: np.ndarray, labels: np.ndarray, mean, std) -> None:
    x = np.lib.format.open_memmap(out / f"x_{split}.npy", mode="w+", dtype=np.float32, shape=images.shape)
    for start in range(0, len(images), CHUNK_ROWS):
        x[start : start + CHUNK_ROWS] = normalize(images[start : start + CHUNK_ROWS], mean, std)
    x.flush()
    del x
    np.save(out / f"pixels_{split}.npy", images)
    np.save(out / f"labels_{split}.npy", labels)
    np.save(out / f"y_{split}.npy", one_hot(labels))


def build_features(manifest_path: Path, out_dir: Path, normalization: str, log=print) -> Features:
    """Write x_/y_/labels_/pixels_{train,test}.npy and meta.json into out_dir (atomically)."""
    manifest = verify_manifest(manifest_path)
    with atomic_directory(out_dir) as staging:
        mean = std = None
        for split in SPLITS:  # train first: standardization statistics come from train only
            images, labels = read_split(manifest_path, split, verify=False)
            if normalization == "standardize" and split == "train":
                mean, std = channel_stats(images)
            _write_split(staging, split, images, labels, mean, std)
            log(f"{split}: {len(labels)} images normalized ({normalization})")
            del images, labels
        files = {p.name: file_digest(p) for p in sorted(staging.glob("*.npy"))}
        meta = {
            "dataset_sha256": manifest["dataset_sha256"],
            "label_names": manifest["label_names"],
            "normalization": normalization,
            "mean": None if mean is None else mean.tolist(),
            "std": None if std is None else std.tolist(),
            "files": files,
            "features_sha256": text_digest(files, normalization),
        }
        write_json(staging / "meta.json", meta)
    return Features(out_dir, meta["features_sha256"], meta["label_names"], normalization)


def verify_features(directory: Path) -> dict:
    """Load meta.json and check every array's sha256; raise ShardError on drift."""
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise ShardError(f"no features at {directory}; run the preprocess stage first")
    meta = read_json(meta_path)
    for name, digest in meta["files"].items():
        path = directory / name
        if not path.is_file() or file_digest(path) != digest:
            raise ShardError(f"feature file {path} is missing or changed; re-run preprocess (--refresh preprocess)")
    return meta


def load_split(directory: Path, split: str, kind: str = "x") -> np.ndarray:
    """Memory-map one array (x, y, labels or pixels) of a split: nothing is read until used."""
    return np.load(directory / f"{kind}_{split}.npy", mmap_mode="r")
