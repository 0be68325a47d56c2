"""The real CIFAR-10 data, when `../shared/datasets` is beside the repository (skips otherwise)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cifarflow.files import file_digest, read_json
from tests.conftest import REPO_ROOT, SHARED_DATASETS

BUILT_SHA256 = "08bc026731e391f26bf96d1ec8d31e03bcb7da322f501f6fdb65eaa8503a5b32"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.skipif(
        not (SHARED_DATASETS / "cifar10-jpeg.tar.gz").is_file(), reason=f"real data not present at {SHARED_DATASETS}"
    ),
]


@pytest.fixture(scope="module")
def real_archive(tmp_path_factory):
    """The official-layout archive built from ../shared/datasets (reused from data/cache if already built)."""
    cached = REPO_ROOT / "data" / "cache" / "cifar-10-python.tar.gz"
    if cached.is_file() and file_digest(cached) == BUILT_SHA256:
        return cached
    target = tmp_path_factory.mktemp("real") / "cifar-10-python.tar.gz"
    subprocess.run(
        [
            sys.executable,
            str(SHARED_DATASETS / "make_cifar10_archive.py"),
            str(SHARED_DATASETS / "cifar10-jpeg.tar.gz"),
            str(target),
        ],
        check=True,
    )
    return target


def test_the_jpeg_copy_as_a_folder_source_gives_the_archives_images_and_labels(real_archive, tmp_path):
    """The class-folder JPEG copy ingested as a folder (sorted class names: the official label order) and the
    official-layout archive built from it hold the same multiset of (split, label, sha256 of pixels)."""
    from collections import Counter

    from cifarflow.data.archive import read_archive
    from cifarflow.data.folder import ingest_folder
    from cifarflow.data.shards import pixel_digest, read_shards, shard_files

    found = ingest_folder(SHARED_DATASETS / "cifar10-jpeg.tar.gz", tmp_path, 32, 1 / 6, 0, 10_000, print, None)
    splits, label_names = read_archive(real_archive)
    assert found["label_names"] == label_names and found["skipped"] == [] and found["split"] == {"method": "given"}
    for split in ("train", "test"):
        images, labels = read_shards(*shard_files(tmp_path, found["shards"][split]))
        folder = Counter(zip(labels.tolist(), map(pixel_digest, images)))
        archive = Counter(zip(splits[split].labels.tolist(), map(pixel_digest, splits[split].images)))
        assert sum(folder.values()) == len(splits[split].labels) and folder == archive, split


def test_real_archive_one_epoch_of_the_classic_preset(real_archive, tmp_path):
    from cifarflow.config import PipelineConfig
    from tests.flow_helpers import run_flow

    config = PipelineConfig(source=str(real_archive), sha256=BUILT_SHA256, data_dir=tmp_path / "data", epochs=1)
    state, states = run_flow(config)
    assert state.is_completed(), state.message
    manifest = read_json(config.layout.shard_manifest)
    assert manifest["splits"]["train"]["rows"] == 50_000 and manifest["splits"]["test"]["rows"] == 10_000
    assert len(manifest["splits"]["train"]["shards"]) == 5
    metrics = read_json(config.layout.latest_report / "metrics.json")
    assert metrics["test_accuracy"] > 0.40, metrics["test_accuracy"]
    assert metrics["classification_report"]["cat"]["support"] == 1000
    check_the_champion_in_use(config, tmp_path)

    # the grow → retrain loop on the real data: a demo inbox of 40 new images and every kind of bad file
    inbox = tmp_path / "incoming"
    made = subprocess.run(
        [sys.executable, "benchmarks/make_demo_inbox.py", "--data-dir", str(config.data_dir), "--out", str(inbox)]
        + ["--new", "40"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    from flows.add_images import main as add_images

    assert add_images([str(inbox), "--data-dir", str(config.data_dir)]) == 0
    (summary_path,) = config.layout.additions_reports.glob("*/summary.json")
    summary = read_json(summary_path)
    reasons = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in summary["rejected"]}
    leaks = {name for name, reason in reasons.items() if "test-set leak" in reason}
    assert leaks == {name for name in reasons if name.startswith("test-copy-")} and len(leaks) == 30
    assert summary["duplicates"] == 20 and summary["added"] >= 38  # a mirrored crop may match a CIFAR near-duplicate
    assert {"truncated.png", "empty.jpg", "notes.jpg", "labels.csv", "bomb.png", "u.png", "stray.png"} <= set(reasons)
    assert "too large" in reasons["bomb.png"]
    state, states = run_flow(config)
    assert state.is_completed() and states["ingest"] == "Cached" and states["train"] == "Completed"
    metrics = read_json(config.layout.latest_report / "metrics.json")
    assert metrics["train_images"] == 50_000 + summary["added"]


def check_the_champion_in_use(config, tmp_path):
    """The registry lists the run's model as v1; batch prediction on 300 test images cut into PNG and
    JPEG files (plus bad files) scores them as evaluation did; the service answers the same."""
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from cifarflow.data.transform import load_split
    from cifarflow.registry import store
    from flows.predict_flow import main as predict

    assert [v.name for v in store.list_versions(config.layout.registry)] == ["v1"]
    assert store.champion_name(config.layout.registry) == "v1"
    features = next(config.layout.features.iterdir())
    pixels, labels = load_split(features, "test", "pixels")[:300], load_split(features, "test", "labels")[:300]
    (evaluation,) = config.layout.evaluations.iterdir()
    evaluated = np.load(evaluation / "probabilities.npy")[:300].argmax(axis=1)
    folder = tmp_path / "to-score"
    (folder / "png").mkdir(parents=True)
    (folder / "jpeg").mkdir()
    for number, image in enumerate(pixels):
        if number % 2:
            Image.fromarray(image).save(folder / "jpeg" / f"{number:03d}.jpg", quality=95)
        else:
            Image.fromarray(image).save(folder / "png" / f"{number:03d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "predictions.parquet"
    assert predict([str(folder), "--data-dir", str(config.data_dir), "--out", str(out)]) == 0
    rows = {Path(row["path"]).name: row for row in pq.read_table(out).to_pylist()}
    assert len(rows) == 302 and rows["broken.png"]["error"] and rows["empty.jpg"]["error"]
    names = store.read_champion_version(config.layout.registry).directory / "version.json"
    label_names = read_json(names)["label_names"]
    predicted = np.array([label_names.index(rows[f"{n:03d}.{'jpg' if n % 2 else 'png'}"]["label"]) for n in range(300)])
    png = np.arange(300) % 2 == 0
    assert np.mean(predicted[png] == evaluated[png]) >= 0.99  # lossless files: evaluation's own answers
    flow_accuracy, evaluated_accuracy = np.mean(predicted == labels), np.mean(evaluated == labels)
    assert abs(flow_accuracy - evaluated_accuracy) <= 0.02, (flow_accuracy, evaluated_accuracy)
