"""Your own images, end to end (issue 30): a labeled folder of another shape is ingested, trained, promoted,
served (page and /predict show its classes), scored by batch prediction, monitored and reviewed — with the real
commands, the real service and a real browser. Two shapes: 3 classes at 64×64 with no test split (the product holds
one out), and 12 classes at 32×32 with train/ and test/ folders, as a .zip."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cifarflow.data.ingest import model_name
from cifarflow.layout import DataLayout
from cifarflow.registry import store
from cifarflow.registry.saved_model import load_export
from flows.cifar_flow import main as pipeline_main
from flows.monitor_flow import main as monitor_main
from flows.predict_flow import main as predict_main
from tests.browser import launched_chromium, require_chromium
from tests.serving_helpers import serving_process

pytestmark = pytest.mark.server  # a service process and a browser

FRUIT = ["quince", "apricot", "medlar"]  # deliberately not sorted: classes.txt gives the order


def picture(label: int, classes: int, rng: np.random.Generator) -> Image.Image:
    """A photo-like image of class `label`: its own hue band and stripe count, random size and aspect ratio."""
    width, height = (int(v) for v in rng.integers(40, 140, size=2))
    hue = 255 * label / classes
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    stripes = np.sin(2 * np.pi * (label + 1) * (x + y) + rng.uniform(0, 6))
    base = np.stack([np.full_like(x, hue), 200 + 50 * stripes, 120 + 100 * stripes], axis=-1)
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "HSV").convert("RGB")


def write_folder(root: Path, classes: list[str], per_class: int, split: str | None, seed: int) -> None:
    """`per_class` images per class under root/<class>/ (or root/<split>/<class>/), PNG and JPEG, some nested."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        for number in range(per_class):
            folder = root / (split or "") / name / ("more" if number % 4 == 0 else "")
            folder.mkdir(parents=True, exist_ok=True)
            suffix = ".png" if number % 2 else ".jpg"
            picture(label, len(classes), rng).save(folder / f"{split or 'img'}-{number}{suffix}")


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_three_classes_at_64_px_with_no_test_split_go_through_every_stage(prefect_server, tmp_path, capsys):
    source, data_dir = tmp_path / "fruit", tmp_path / "data"
    write_folder(source, FRUIT, per_class=24, split=None, seed=1)
    (source / "classes.txt").write_text("\n".join(FRUIT) + "\n")
    (source / "quince" / "notes.jpg").write_bytes(b"this is not a picture")

    common = ["--source", str(source), "--data-dir", str(data_dir), "--image-size", "64", "--min-accuracy", "0"]
    assert pipeline_main([*common, "--epochs", "2"]) == 0, capsys.readouterr().out
    assert last_line(capsys).startswith("done:")
    layout = DataLayout(data_dir.resolve())
    manifest = json.loads(layout.shard_manifest.read_text())
    assert manifest["label_names"] == FRUIT and manifest["image_size"] == 64
    assert manifest["split"]["method"] == "held-out"
    assert manifest["splits"]["test"]["rows"] == 3 * round(24 / 6)  # 1/6 of each class, stratified
    assert [entry["path"] for entry in manifest["skipped"]] == ["quince/notes.jpg"]

    # the champion, its export and its record carry the data set
    champion = store.read_champion_version(layout.registry)
    assert champion is not None
    exported = load_export(champion.export_dir)
    assert exported.label_names == FRUIT and exported.image_size == 64
    probabilities = exported.probabilities(np.zeros((2, 64, 64, 3), np.uint8))
    assert probabilities.shape == (2, 3)
    assert list(champion.label_names) == FRUIT and champion.image_size == 64

    # batch prediction scores at the data set's size and answers with its classes
    photos = tmp_path / "photos"
    write_folder(photos, FRUIT, per_class=2, split=None, seed=7)
    out = tmp_path / "scored.parquet"
    assert predict_main([str(photos), "--data-dir", str(data_dir), "--out", str(out)]) == 0
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 6 and {row["label"] for row in rows} <= set(FRUIT)

    # the service, its page and the review queue follow the champion's classes
    with serving_process(data_dir, tmp_path / "serving.log") as server:
        model = httpx.get(f"{server.url}/model").json()
        assert model["label_names"] == FRUIT and model["image_size"] == 64
        image = next(photos.rglob("*.png"))
        answer = httpx.post(f"{server.url}/predict", files={"file": image.read_bytes()}).json()
        assert answer["label"] in FRUIT and {top["label"] for top in answer["top"]} <= set(FRUIT)
        (name,) = httpx.get(f"{server.url}/v2").json()["models"]  # the Open Inference Protocol's: the folder's name
        assert name == model_name(model["dataset"]["source"]) and name not in ("", "classifier")
        metadata = httpx.get(f"{server.url}/v2/models/{name}").json()
        assert metadata["inputs"][0]["shape"] == [-1, 64, 64, 3] and metadata["outputs"][0]["shape"] == [-1, 3]
        assert json.loads(metadata["parameters"]["label_names"]) == FRUIT
        queue = httpx.get(f"{server.url}/review/queue").json()
        assert queue["items"] and {item["label"] for item in queue["items"]} <= set(FRUIT)
        thumbnail = httpx.get(f"{server.url}{queue['items'][0]['thumbnail']}")
        assert Image.open(io.BytesIO(thumbnail.content)).size == (64, 64)
        wrong = httpx.post(f"{server.url}/feedback", json={"prediction_id": answer["prediction_id"], "label": "cat"})
        assert wrong.status_code == 422 and "quince, apricot, medlar" in wrong.json()["error"]
        right = httpx.post(f"{server.url}/feedback", json={"prediction_id": answer["prediction_id"], "label": "medlar"})
        assert right.status_code == 200, right.text

        require_chromium()
        with launched_chromium() as browser:
            page = browser.new_page()
            page.goto(server.url, wait_until="networkidle")
            page.wait_for_function("document.querySelector('#classes').textContent.length > 0")
            assert page.text_content("#classes") == ", ".join(FRUIT)
            page.set_input_files("#file", str(image))
            page.wait_for_function("document.querySelector('#label').textContent.includes('%')")
            assert page.text_content("#label").split(" (")[0] in FRUIT

    # the monitor judges the logged window against this data set's reference
    capsys.readouterr()
    assert monitor_main(["--data-dir", str(data_dir)]) == 0
    assert last_line(capsys).startswith("done:")


def test_twelve_classes_at_32_px_from_a_zip_with_train_and_test(prefect_server, tmp_path, capsys):
    classes = [f"kind-{letter}" for letter in "abcdefghijkl"]
    folder, data_dir = tmp_path / "shapes", tmp_path / "data"
    write_folder(folder, classes, per_class=12, split="train", seed=2)
    write_folder(folder, classes, per_class=3, split="test", seed=3)
    archive = tmp_path / "shapes.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            zipped.write(path, path.relative_to(tmp_path))

    common = ["--source", str(archive), "--data-dir", str(data_dir), "--min-accuracy", "0"]
    assert pipeline_main([*common, "--epochs", "1"]) == 0, capsys.readouterr().out
    layout = DataLayout(data_dir.resolve())
    manifest = json.loads(layout.shard_manifest.read_text())
    assert manifest["label_names"] == classes and manifest["image_size"] == 32
    assert manifest["split"] == {"method": "given"} and manifest["splits"]["test"]["rows"] == 36
    exported = load_export(store.read_champion_version(layout.registry).export_dir)
    assert exported.probabilities(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 12)

    # a data dir holds one data set: another class set is refused before any work, the data dir untouched
    before = layout.shard_manifest.read_bytes()
    other = tmp_path / "other"
    write_folder(other, FRUIT, per_class=6, split=None, seed=4)
    capsys.readouterr()
    assert pipeline_main(["--source", str(other), "--data-dir", str(data_dir)]) == 2
    refusal = last_line(capsys)
    assert refusal.startswith("error:") and str(data_dir) in refusal and "--data-dir" in refusal
    assert layout.shard_manifest.read_bytes() == before
