"""Tiny CIFAR-10 archives in the official layout, for tests.

Batches are pickled as the real ones are: protocol 2, byte-string keys, the data array
reconstructed through `numpy.core.multiarray._reconstruct`. Each class has its own colour and
stripe pattern under noise, so a small model learns it quickly and accuracy floors mean something.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 3072) uint8 in the archive's CHW order; class k has a distinct tint and stripe period."""
    n = len(labels)
    rows = np.arange(32)[None, :, None]
    images = np.empty((n, 32, 32, 3), np.float32)
    for k in range(10):
        idx = np.flatnonzero(labels == k)
        tint = np.array([(k * 37) % 256, (k * 91) % 256, (k * 53) % 256], np.float32)
        stripes = 60.0 * np.sin(2 * np.pi * rows / (3 + k))[..., None]
        images[idx] = tint + stripes
    images += rng.normal(0, 25, images.shape)
    images = np.clip(images, 0, 255).astype(np.uint8)
    return images.transpose(0, 3, 1, 2).reshape(n, 3072)


class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes bytes as Python 2 `str` (BINSTRING), as the original
    archive's pickles do, instead of Python 3's `_codecs.encode(...)` form."""

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # as numpy 1.x wrote it


def batch_bytes(label: str, labels: np.ndarray, data: np.ndarray, filenames: list[str]) -> bytes:
    return py2_pickle(
        {
            b"batch_label": label.encode(),
            b"labels": [int(v) for v in labels],
            b"data": data,
            b"filenames": [f.encode() for f in filenames],
        }
    )


def meta_bytes() -> bytes:
    return py2_pickle({b"num_cases_per_batch": 10000, b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072})


def archive_members(per_batch: int = 60, test_size: int = 100, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    members = {}
    for i in range(1, 6):
        labels = rng.integers(0, 10, per_batch)
        members[f"data_batch_{i}"] = batch_bytes(
            f"training batch {i} of 5",
            labels,
            class_images(labels, rng),
            [f"img_{i}_{j:04d}.png" for j in range(per_batch)],
        )
    labels = rng.integers(0, 10, test_size)
    members["test_batch"] = batch_bytes(
        "testing batch 1 of 1", labels, class_images(labels, rng), [f"test_{j:04d}.png" for j in range(test_size)]
    )
    members["batches.meta"] = meta_bytes()
    return members


def write_archive(path: Path, members: dict[str, bytes] | None = None, **kwargs) -> Path:
    """Write cifar-10-python.tar.gz-style archive at `path` from `members` (name → bytes)."""
    members = archive_members(**kwargs) if members is None else members
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def write_features(
    directory: Path, pixels: np.ndarray, labels: np.ndarray, normalization, split: str = "train", label_names=CLASSES
) -> Path:
    """A minimal features directory (what preprocess writes) for trainer tests: arrays and meta.json, the image size
    that of `pixels` (N, S, S, 3)."""
    from cifarflow.data.transform import one_hot
    from cifarflow.files import write_json

    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / f"pixels_{split}.npy", pixels)
    np.save(directory / f"labels_{split}.npy", np.asarray(labels, np.uint8))
    np.save(directory / f"onehot_{split}.npy", one_hot(labels, len(label_names)))
    meta = {"features_sha256": "test", "label_names": list(label_names), "normalization": normalization.to_json()}
    meta |= {"files": {}, "image_size": int(pixels.shape[1]), "dataset": {}}
    write_json(directory / "meta.json", meta)
    return directory
