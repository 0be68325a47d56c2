"""Stage 2, preprocess: shards → the fitted normalization (every model's first layer, as TFX Transform) and `.npy`
arrays per split (uint8 pixels, labels, one-hot labels) the trainers memory-map."""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Literal

import numpy as np

from cifarflow.data.shards import SPLITS, read_shards, shard_files
from cifarflow.data.statistics import channel_stats
from cifarflow.errors import FeatureError
from cifarflow.files import atomic_directory, file_digest, read_json, text_digest, write_json
from cifarflow.outputs import StageOutput, read_whole

NormalizationKind = Literal["unit", "standardize"]


@dataclass(frozen=True)
class Normalization:
    """Per channel (pixels / 255 − mean) / std; `unit`: mean 0, std 1; `standardize`: fitted on train."""

    kind: NormalizationKind
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def scale(self) -> np.ndarray:
        return (1.0 / (255.0 * np.asarray(self.std, np.float64))).astype(np.float32)

    @property
    def offset(self) -> np.ndarray:
        return (-np.asarray(self.mean, np.float64) / np.asarray(self.std, np.float64)).astype(np.float32)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """The model input layer's arithmetic in NumPy: float32 `pixels * scale + offset`."""
        return np.asarray(pixels).astype(np.float32) * self.scale + self.offset

    def to_json(self) -> dict:
        return {"kind": self.kind, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, data: dict) -> Normalization:
        return cls(data["kind"], tuple(data["mean"]), tuple(data["std"]))


def fit_normalization(train_pixels: np.ndarray, kind: NormalizationKind) -> Normalization:
    """Fitted on (N, S, S, 3) uint8 pixels; ValueError for an unknown kind."""
    if kind == "unit":
        return Normalization("unit", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    if kind == "standardize":
        mean, std = channel_stats(train_pixels)
        return Normalization("standardize", tuple(float(m) for m in mean), tuple(float(s) for s in std))
    raise ValueError(f"unknown normalization {kind!r}; choose 'unit' or 'standardize'")


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, num_classes) uint8 one-hot rows (a tenth of float32's size; cast when batched)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    encoded = np.zeros((labels.size, num_classes), np.uint8)
    encoded[np.arange(labels.size), labels] = 1
    return encoded


@dataclass(frozen=True)
class Features(StageOutput):
    directory: Path
    features_sha256: str
    label_names: list[str]
    normalization: Normalization
    image_size: int  # the images' side S: pixels are (N, S, S, 3)
    dataset: dict  # the manifest's {dataset_sha256, source {kind, uri, sha256}, split}: what its models carry
    batch_ids: tuple[str, ...] = ()  # the added batches in its training split (the lineage)

    location = property(attrgetter("directory"))
    fingerprint = property(attrgetter("features_sha256"))


def build_features(
    dataset_path: Path, manifest_path: Path, out_dir: Path, normalization: NormalizationKind, log=print
) -> Features:
    """Write pixels_/labels_/onehot_{train,test}.npy and meta.json (with the data set's image size, source and
    split from the ingest manifest at `manifest_path`) into out_dir whole; FeatureError when the manifest is not
    the one the validated `dataset_path` was made from."""
    dataset, manifest = read_json(dataset_path), read_json(manifest_path)
    if manifest["dataset_sha256"] != dataset["lineage"]["base"]["dataset_sha256"]:
        raise FeatureError(f"{manifest_path} changed since {dataset_path} was validated; run the pipeline again")
    with atomic_directory(out_dir) as staging:
        fitted = None
        for split in SPLITS:  # train first: the transform is fitted on train only
            images, labels = read_shards(*shard_files(dataset_path.parent, dataset["splits"][split]))
            fitted = fitted or fit_normalization(images, normalization)
            np.save(staging / f"pixels_{split}.npy", images)
            np.save(staging / f"labels_{split}.npy", labels)
            np.save(staging / f"onehot_{split}.npy", one_hot(labels, len(dataset["label_names"])))
            log(f"{split}: {len(labels)} images, labels one-hot encoded")
            del images, labels
        log(f"normalization {fitted.kind}: mean {fitted.mean}, std {fitted.std}")
        files = {p.name: file_digest(p) for p in sorted(staging.glob("*.npy"))}
        meta = {
            "dataset_version": dataset["lineage"]["dataset_version"],
            "lineage": dataset["lineage"],
            "label_names": dataset["label_names"],
            "image_size": manifest["image_size"],
            "dataset": {key: manifest[key] for key in ("dataset_sha256", "split")}
            | {"source": {key: manifest["source"].get(key) for key in ("kind", "uri", "sha256")}},
            "normalization": fitted.to_json(),
            "files": files,
            "features_sha256": text_digest(files, fitted.to_json()),
        }
        write_json(staging / "meta.json", meta)
    return features_from_meta(out_dir, meta)


def features_from_meta(directory: Path, meta: dict) -> Features:
    batch_ids = tuple(b["batch_id"] for b in meta.get("lineage", {}).get("batches", []))
    normalization = Normalization.from_json(meta["normalization"])
    facts = meta["label_names"], normalization, meta["image_size"], meta["dataset"]
    return Features(directory, meta["features_sha256"], *facts, batch_ids)


def verify_features(directory: Path) -> Features:
    """The features in `directory`; FeatureError when an array's sha256 changed."""
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise FeatureError(f"no features at {directory}; run the preprocess stage first")
    meta = read_json(meta_path)
    for name, digest in meta["files"].items():
        path = directory / name
        if not path.is_file() or file_digest(path) != digest:
            raise FeatureError(f"feature file {path} is missing or changed; re-run preprocess (--refresh preprocess)")
    return features_from_meta(directory, meta)


def find_features(directory: Path) -> Features | None:
    return read_whole(lambda: verify_features(directory), FeatureError)


def read_features(directory: Path) -> Features:
    """The features' metadata without re-hashing (the runner verified them before handing them on)."""
    return features_from_meta(directory, read_json(directory / "meta.json"))


def load_split(directory: Path, split: str, kind: str = "pixels") -> np.ndarray:
    """Memory-map one array (pixels, labels or onehot) of a split: nothing is read until used."""
    return np.load(directory / f"{kind}_{split}.npy", mmap_mode="r")
