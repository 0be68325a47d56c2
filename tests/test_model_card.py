"""The standard model card (README.md in the report directory and in every registry version): Hugging Face's form,
YAML metadata a parser reads back, then the sections of Mitchell et al. 2019, each stating facts of its inputs."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import yaml

from cifarflow.reporting.model_card import render_model_card
from tests.registry_helpers import evaluation_metrics, report_facts

SECTIONS = (
    "Model details",
    "Intended use",
    "Out-of-scope uses",
    "Training data",
    "Evaluation data",
    "Metrics",
    "Calibration",
    "Robustness",
    "Limitations",
    "How to use",
)


def facts(label_names=("apple", "pear", "plum"), image_size=48, images=120, seed=0):
    """(card, metrics) for a model right on about 70% of `images` test images, the last class the weakest."""
    rng = np.random.default_rng(seed)
    labels = np.arange(images) % len(label_names)
    weak = labels == len(label_names) - 1
    right = rng.random(images) < np.where(weak, 0.3, 0.85)
    predictions = np.where(right, labels, (labels + 1) % len(label_names))
    return report_facts(evaluation_metrics(predictions, labels, list(label_names)), image_size, "ab" * 32)


def parse(readme: str) -> tuple[dict, dict[str, str]]:
    """The card's YAML metadata and its sections (level-2 heading → text)."""
    assert readme.startswith("---\n")
    metadata, body = readme[4:].split("\n---\n", 1)
    parts = re.split(r"^## (.+)$", body, flags=re.M)
    return yaml.safe_load(metadata), {heading: text.strip() for heading, text in zip(parts[1::2], parts[2::2])}


def wilson(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's score interval, from its formula (the card's comes from scipy)."""
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return centre - half, centre + half


def test_metadata_is_yaml_hugging_face_reads_with_the_test_accuracy():
    card, metrics = facts()
    metadata, _ = parse(render_model_card(card, metrics, "v4"))
    (model,) = metadata["model-index"]
    (result,) = model["results"]
    assert result["metrics"] == [{"type": "accuracy", "value": metrics["test_accuracy"], "name": "Test accuracy"}]
    assert model["name"] == "synthetic" and "datasets" not in metadata  # the v2 name; no Hub dataset id to claim
    assert result["dataset"]["revision"] == card["dataset_version"] and result["dataset"]["split"] == "test"
    assert result["task"]["type"] == metadata["pipeline_tag"] == "image-classification"
    assert {"image-classification", "classic"} <= set(metadata["tags"]) and metadata["library_name"] == "keras"


def test_every_section_states_facts_of_its_inputs():
    card, metrics = facts()
    _, sections = parse(render_model_card(card, metrics, "v4"))
    assert list(sections) == list(SECTIONS)
    assert "registry version **v4**" in sections["Model details"] and card["model_sha256"] in sections["Model details"]
    assert "uint8 `[N, 48, 48, 3]`" in sections["Model details"] and "apple, pear, plum" in sections["Model details"]
    assert (
        "3 classes it was trained on (apple, pear, plum)" in sections["Intended use"]
        and "48×48" in sections["Intended use"]
    )
    assert f"({1 - metrics['test_accuracy']:.1%} of the test" in sections["Out-of-scope uses"]
    assert "`dataset-test`" in sections["Training data"] and "480" in sections["Training data"]
    assert sections["Evaluation data"].startswith("120 test images")
    confusion = np.asarray(metrics["confusion_matrix"])
    low, high = wilson(int(np.trace(confusion)), 120)
    assert f"**{metrics['test_accuracy']:.4f}** (95% interval {low:.3f}–{high:.3f}, 120 images" in sections["Metrics"]
    plum_low, plum_high = wilson(int(confusion[2, 2]), int(confusion[2].sum()))
    assert "| plum | " in sections["Metrics"] and f"{plum_low:.3f}–{plum_high:.3f}" in sections["Metrics"]
    assert "| expected calibration error (15 bins) | 0.1600 | 0.0400 |" in sections["Calibration"]
    assert "reliability.png" not in sections["Calibration"]  # a version's folder has no diagram
    assert "| gaussian_noise |" in sections["Robustness"]
    assert "Weak class plum" in sections["Limitations"] and "most often taken for apple" in sections["Limitations"]
    worst = metrics["test_accuracy"] * 0.5
    assert f"Under gaussian_noise (hard) accuracy falls to {worst:.3f}" in sections["Limitations"]
    assert "/v2/models/synthetic/infer" in sections["How to use"] and "[0] * 6912" in sections["How to use"]
    assert (
        "registry/versions/v4/model.onnx" in sections["How to use"] and "versions/v4/export" in sections["How to use"]
    )


def test_the_card_follows_its_numbers():
    card, metrics = facts()
    before = render_model_card(card, metrics)
    assert "not registered" in before and "registry/versions/<version>/model.onnx" in before
    changed = copy.deepcopy(metrics)
    changed["test_accuracy"] = 0.123
    changed["robustness"]["corruptions"]["blur"]["accuracy"][2] = 0.01
    changed["calibration"]["unsupported"] = ["the halves disagree"]
    metadata, sections = parse(render_model_card(card | {"test_set_decisions": 7}, changed))
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.123
    assert "Under blur (hard) accuracy falls to 0.010" in sections["Limitations"]
    assert "uncalibrated" in sections["Limitations"] and "served 7 promotion decision(s)" in sections["Limitations"]
    assert "uncalibrated" not in before and "promotion decision" not in before
    smaller, _ = facts(images=30)
    _, fewer = parse(render_model_card(smaller, facts(images=30)[1]))
    assert "Measured on 30 test images" in fewer["Limitations"]


def test_a_card_names_no_other_data_set_than_its_own():
    card, metrics = facts(label_names=("quince", "medlar"), image_size=64)
    readme = render_model_card(card, metrics)
    assert "[N, 64, 64, 3]" in readme and "64×64" in readme and "[0] * 12288" in readme
    assert "cifar-10" not in readme.lower() and "airplane" not in readme and "32×32" not in readme


@pytest.mark.flow  # the session's two-version registry, built as a promotion builds it
def test_every_registry_version_holds_its_card_sealed(two_versions):
    from cifarflow.files import file_digest, read_json
    from cifarflow.registry import store

    for version in store.list_versions(two_versions / "registry"):
        readme = version.directory / "README.md"
        sealed = read_json(version.directory / "version.json")["files"]["README.md"]
        assert sealed == {"size": readme.stat().st_size, "sha256": file_digest(readme)}
        metadata, sections = parse(readme.read_text())
        assert metadata["model-index"][0]["results"][0]["metrics"][0]["value"] == version.accuracy
        assert f"registry version **{version.name}**" in sections["Model details"]
        assert version.model_id in sections["Model details"]
