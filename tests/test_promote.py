"""Champion/challenger (tasks/promote.py): the statistics, the decision rule and the registry on
synthetic predictions (fast), and the `promote` task in the flow on a synthetic archive."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cifarflow.data.transform import Features, Normalization
from cifarflow.evaluation.evaluate import compute_metrics
from cifarflow.promotion.decision import NO_CHAMPION, Score, decide, score_from_evaluation
from cifarflow.promotion.mcnemar import format_p, mcnemar_test
from cifarflow.promotion.outcome import baseline_id, current_champion_id
from cifarflow.promotion.promote import version_score
from cifarflow.promotion.section import (
    SECTION_BEGIN,
    SECTION_END,
    comparison_markdown,
    confusion_difference,
    with_section,
    write_section,
)
from cifarflow.registry.store import read_champion_version, read_decisions, record_decision
from cifarflow.training.warm_start import WarmStartPlan, plan_warm_start

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DATASET = "d" * 64


def exact_p(b: int, c: int) -> float:
    """Reference two-sided exact McNemar p-value with integer arithmetic."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def champion_score(registry: Path) -> Score | None:
    """The champion as a Score, or None when there is none yet."""
    version = read_champion_version(registry)
    return version_score(version) if version else None


def labels_digest(labels: np.ndarray) -> str:
    """A stand-in test set id: the sha256 of the labels."""
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()


def one_hot(predicted: np.ndarray) -> np.ndarray:
    probabilities = np.full((len(predicted), 10), 0.01, np.float32)
    probabilities[np.arange(len(predicted)), predicted] = 0.91
    return probabilities


def make_score(
    labels: np.ndarray, predicted: np.ndarray, model_id: str, dataset: str = DATASET, run: str = "run"
) -> Score:
    return Score(
        model_id=model_id,
        run_name=run,
        preset="classic",
        dataset_version=dataset,
        test_set_sha256=labels_digest(labels),
        predictions=np.asarray(predicted),
        labels=np.asarray(labels),
        metrics=compute_metrics(labels, one_hot(predicted), CLASSES),
        label_names=tuple(CLASSES),
        image_size=32,
    )


def with_accuracy(labels: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Predictions that are right exactly where `right` is True (wrong = the next class)."""
    return np.where(right, labels, (labels + 1) % 10)


@pytest.fixture
def labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 10, 1000)


# ------------------------------------ McNemar -----------------------------------------------


@pytest.mark.parametrize("b,c", [(0, 10), (3, 12), (7, 7), (40, 61), (0, 0), (150, 110)])
def test_exact_mcnemar_matches_the_binomial_reference(b, c):
    champion = np.array([True] * b + [False] * c + [True] * 50)
    challenger = np.array([False] * b + [True] * c + [True] * 50)
    result = mcnemar_test(champion, challenger)
    assert (result.champion_only, result.challenger_only) == (b, c)
    assert result.p_value == pytest.approx(exact_p(b, c), rel=1e-9)


def test_mid_p_is_the_exact_p_less_the_observed_point_probability():
    champion = np.array([True] * 3 + [False] * 12)
    challenger = ~champion
    exact = mcnemar_test(champion, challenger, "exact").p_value
    midp = mcnemar_test(champion, challenger, "midp").p_value
    assert midp == pytest.approx(exact - math.comb(15, 3) / 2**15)
    assert midp < exact


def test_mcnemar_rejects_unpaired_inputs_and_unknown_methods():
    with pytest.raises(ValueError, match="equal shapes"):
        mcnemar_test(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="unknown McNemar method"):
        mcnemar_test(np.ones(3, bool), np.zeros(3, bool), "chi2")


def test_p_values_read_as_in_the_decisions():
    assert format_p(1e-9) == "p < 0.001"
    assert format_p(0.41) == "p = 0.41"
    assert format_p(0.0312) == "p = 0.031"


# ------------------------------------ the decision ------------------------------------------


def test_first_run_promotes_automatically(labels):
    challenger = make_score(labels, with_accuracy(labels, np.arange(1000) % 10 < 6), "a" * 64)
    decision = decide(challenger, None)
    assert decision.promoted and decision.reason == "first"
    assert decision.summary == "promoted: first champion (test accuracy 0.600)"
    assert decision.resulting_champion == "a" * 64


def test_significantly_better_challenger_is_promoted(labels):
    idx = np.arange(1000)
    champion = make_score(labels, with_accuracy(labels, idx % 100 < 61), "a" * 64)
    challenger = make_score(labels, with_accuracy(labels, idx % 100 < 70), "b" * 64)
    decision = decide(challenger, champion)
    assert decision.promoted and decision.reason == "better"
    assert decision.summary.startswith("promoted: 0.610 → 0.700, p < 0.001")
    assert decision.test.challenger_only == 90 and decision.test.champion_only == 0
    assert decision.resulting_champion == "b" * 64


def test_small_improvement_keeps_the_champion(labels):
    idx = np.arange(1000)
    champion_right = idx % 100 < 61
    challenger_right = champion_right.copy()
    challenger_right[[61, 161, 261, 361, 461]] = True  # 5 more right ...
    challenger_right[[0, 100, 200]] = False  # ... and 3 fewer: +0.002
    champion = make_score(labels, with_accuracy(labels, champion_right), "a" * 64)
    challenger = make_score(labels, with_accuracy(labels, challenger_right), "b" * 64)
    decision = decide(challenger, champion)
    assert not decision.promoted and decision.reason == "not-better"
    assert decision.summary.startswith("kept champion: difference +0.002")
    assert f"p = {decision.test.p_value:.2g}" in decision.summary
    assert decision.test.p_value == pytest.approx(exact_p(3, 5))
    assert decision.resulting_champion == "a" * 64


def test_worse_challenger_keeps_the_champion_even_when_significant(labels):
    idx = np.arange(1000)
    champion = make_score(labels, with_accuracy(labels, idx % 100 < 70), "a" * 64)
    challenger = make_score(labels, with_accuracy(labels, idx % 100 < 61), "b" * 64)
    decision = decide(challenger, champion)
    assert not decision.promoted
    assert decision.summary.startswith("kept champion: difference -0.090")
    assert "not better" in decision.summary


def test_alpha_is_configurable(labels):
    idx = np.arange(1000)
    champion_right = idx % 100 < 61
    challenger_right = champion_right | (idx % 100 == 61) & (idx < 600)  # 6 more right, none fewer
    champion = make_score(labels, with_accuracy(labels, champion_right), "a" * 64)
    challenger = make_score(labels, with_accuracy(labels, challenger_right), "b" * 64)
    assert decide(challenger, champion, alpha=0.05).promoted  # p = 2/64 = 0.031
    assert not decide(challenger, champion, alpha=0.01).promoted  # an alpha outside (0, 1): test_config.py


def test_challenger_that_is_the_champion_changes_nothing(labels):
    score = make_score(labels, labels, "a" * 64)
    decision = decide(score, score)
    assert not decision.promoted and decision.reason == "already-champion"
    assert decision.resulting_champion == "a" * 64


def test_changed_test_set_promotes_the_challenger_and_says_why(labels):
    champion = make_score(labels, labels, "a" * 64, dataset="1" * 64)  # perfect, but on other data
    other_labels = np.random.default_rng(1).integers(0, 10, 500)
    challenger = make_score(other_labels, with_accuracy(other_labels, np.arange(500) < 250), "b" * 64)
    decision = decide(challenger, champion)
    assert decision.promoted and decision.reason == "test-set-changed" and not decision.comparable
    old, new = labels_digest(labels)[:12], labels_digest(other_labels)[:12]
    assert f"the test set changed (test images {old}… → {new}…)" in decision.summary
    assert decision.test is None


def test_same_test_images_pair_even_if_the_dataset_digest_differs(labels):
    # the dataset version also covers the train split and the shard layout; pairing needs only the test set
    champion = make_score(labels, with_accuracy(labels, np.arange(1000) % 2 == 0), "a" * 64, dataset="1" * 64)
    challenger = make_score(labels, labels, "b" * 64, dataset="2" * 64)
    assert decide(challenger, champion).reason == "better"
    reordered = make_score(labels[::-1].copy(), labels[::-1].copy(), "b" * 64)
    assert decide(reordered, champion).reason == "test-set-changed"


def test_test_set_id_follows_test_images_not_normalization(tmp_path):
    from cifarflow.promotion.decision import test_set_id

    def meta(directory, pixels, labels, normalization):
        directory.mkdir()
        files = {"pixels_test.npy": pixels, "labels_test.npy": labels, "x_test.npy": normalization}
        (directory / "meta.json").write_text(json.dumps({"files": files}))
        return test_set_id(directory)

    assert meta(tmp_path / "a", "p1", "l1", "unit") == meta(tmp_path / "b", "p1", "l1", "standardize")
    assert meta(tmp_path / "c", "p1", "l1", "unit") != meta(tmp_path / "d", "p2", "l1", "unit")


# ------------------------------------ the registry ------------------------------------------


def write_model(path: Path, content: bytes) -> tuple[Path, str]:
    import hashlib

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def register_fake(registry: Path, model_path: Path, score: Score, decision) -> str:
    """A version written by hand (no real network to export: an empty export/), committed and made the
    champion as a promotion does; what promotion reads from the registry does not need TensorFlow."""
    from datetime import UTC, datetime

    from cifarflow.promotion.promote import version_record
    from cifarflow.registry import store

    name = store.next_name(registry)
    staging = store.new_staging(registry)
    (staging / "export").mkdir()
    (staging / "model.keras").write_bytes(model_path.read_bytes())
    np.save(staging / "predictions.npy", score.predictions.astype(np.int16))
    np.save(staging / "labels.npy", score.labels.astype(np.int16))
    (staging / "metrics.json").write_text(json.dumps(score.metrics))
    record = version_record(score, decision, model_path, datetime.now(UTC))
    (staging / "version.json").write_text(json.dumps(record.to_json() | {"version": name}))
    store.commit_version(registry, staging, name)
    store.move_alias(registry, name, by="promotion", reason=decision.summary)
    return name


def test_the_champion_is_the_version_the_alias_points_at(tmp_path, labels):
    from cifarflow.registry import store

    registry = tmp_path / "registry"
    assert champion_score(registry) is None and current_champion_id(registry) == NO_CHAMPION
    model_a, id_a = write_model(tmp_path / "a" / "model.keras", b"model a")
    model_b, id_b = write_model(tmp_path / "b" / "model.keras", b"model b")
    idx = np.arange(1000)
    score_a = make_score(labels, with_accuracy(labels, idx % 100 < 61), id_a, run="run-a")
    score_b = make_score(labels, with_accuracy(labels, idx % 100 < 70), id_b, run="run-b")

    first = decide(score_a, champion_score(registry))
    assert register_fake(registry, model_a, score_a, first) == "v1"
    record_decision(registry, first, "run-a")
    assert current_champion_id(registry) == id_a
    assert baseline_id(registry, id_a) == NO_CHAMPION  # A replaced nobody: an identical rerun keys like run 1
    assert baseline_id(registry, id_b) == id_a

    champion = champion_score(registry)
    assert champion.accuracy == pytest.approx(0.61) and champion.run_name == "run-a"
    np.testing.assert_array_equal(champion.predictions, score_a.predictions)

    second = decide(score_b, champion)
    assert second.promoted
    assert register_fake(registry, model_b, score_b, second) == "v2"
    record_decision(registry, second, "run-b")
    assert current_champion_id(registry) == id_b and store.champion_name(registry) == "v2"
    assert baseline_id(registry, id_b) == id_a
    assert (registry / "versions" / "v2" / "model.keras").read_bytes() == b"model b"
    assert (registry / "versions" / "v1" / "model.keras").read_bytes() == b"model a"  # the old one stays
    record = json.loads((registry / "versions" / "v2" / "version.json").read_text())
    assert record["replaced"] == id_a and record["decision"] == second.summary and record["version"] == "v2"
    assert [d["summary"] for d in read_decisions(registry)] == [first.summary, second.summary]
    assert [(m["from"], m["to"], m["by"]) for m in store.alias_moves(registry)] == [
        (None, "v1", "promotion"),
        ("v1", "v2", "promotion"),
    ]
    assert not (registry / ".staging").exists()


def test_the_floor_stops_a_promotion_that_the_comparison_would_make(labels):
    idx = np.arange(1000)
    weak = make_score(labels, with_accuracy(labels, idx % 100 < 61), "weak")
    first = decide(weak, None, min_accuracy=0.8)
    assert not first.promoted and first.reason == "below-floor" and first.min_accuracy == 0.8
    assert "below the promotion floor 0.8" in first.summary and "first champion" in first.summary
    better = make_score(labels, with_accuracy(labels, idx % 100 < 75), "better")
    assert decide(better, weak, min_accuracy=0.8).reason == "below-floor"  # better, significant, still too low
    assert decide(better, weak, min_accuracy=0.7).reason == "better"
    assert decide(weak, None, min_accuracy=None).reason == "first"


def test_a_champion_trained_on_a_withdrawn_batch_is_replaced(labels):
    idx = np.arange(1000)
    champion = replace(make_score(labels, with_accuracy(labels, idx % 100 < 70), "old"), batch_ids=("b1", "b2"))
    challenger = replace(make_score(labels, with_accuracy(labels, idx % 100 < 65), "new"), batch_ids=("b1",))
    decision = decide(challenger, champion)
    assert decision.promoted and decision.reason == "champion-data-withdrawn" and "b2" in decision.summary
    grown = replace(challenger, batch_ids=("b1", "b2", "b3"))  # more data than the champion saw: a normal comparison
    assert decide(grown, champion).reason == "not-better"


def features_of(normalization: str, batch_ids, label_names=CLASSES, image_size: int = 32) -> Features:
    """A preprocess output's facts, as the warm start plan reads them."""
    kind = Normalization(normalization, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return Features(Path("features"), "f", list(label_names), kind, image_size, {}, tuple(batch_ids))


def warm_start_source(registry, preset, normalization, batch_ids, **data_set):
    plan = plan_warm_start(True, registry, preset, features_of(normalization, batch_ids, **data_set))
    return plan.model_path, plan.note


def test_warm_start_serves_only_a_champion_that_fits(tmp_path, labels):
    registry = tmp_path / "registry"
    assert warm_start_source(registry, "classic", "unit", ())[1]["reason"] == "no champion yet"
    model, model_id = write_model(tmp_path / "m" / "model.keras", b"weights")
    score = replace(make_score(labels, labels, model_id), batch_ids=("b1",), normalization="unit")
    register_fake(registry, model, score, decide(score, None))
    source, note = warm_start_source(registry, "classic", "unit", ("b1", "b2"))
    assert source == str(registry / "versions" / "v1" / "model.keras") and note["champion_id"] == model_id
    refused = warm_start_source(registry, "fast", "unit", ("b1",))[1]["reason"]
    assert "`classic` model, this run trains `fast`" in refused
    assert "normalized as `unit`" in warm_start_source(registry, "classic", "standardize", ("b1",))[1]["reason"]
    assert "withdrawn batch b1" in warm_start_source(registry, "classic", "unit", ())[1]["reason"]
    plan = plan_warm_start(True, registry, "classic", features_of("unit", ("b1",)))  # the train key's: the champion
    assert plan.fingerprint == model_id
    refused = plan_warm_start(True, registry, "fast", features_of("unit", ("b1",)))
    assert refused.fingerprint.startswith("none: the champion is")
    assert plan_warm_start(False, registry, "classic", features_of("unit", ("b1",))) == WarmStartPlan()  # not read
    other_classes = warm_start_source(registry, "classic", "unit", ("b1",), label_names=["ant", "bee", "wasp"])[1]
    assert other_classes["reason"] == (
        "the champion classifies 10 classes (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck) at "
        "32×32, this run's model 3 classes (ant, bee, wasp) at 32×32"
    )
    other_size = warm_start_source(registry, "classic", "unit", ("b1",), image_size=64)
    assert other_size[0] is None and "this run's model 10 classes (airplane" in other_size[1]["reason"]
    assert other_size[1]["reason"].endswith("at 64×64")


def test_a_version_is_not_staged_from_a_model_file_that_is_not_the_challenger(tmp_path, labels):
    from cifarflow.registry.build import Canary, stage_next_version
    from cifarflow.registry.store import VersionRecord

    model, _ = write_model(tmp_path / "m" / "model.keras", b"something else")
    registry = tmp_path / "registry"
    canary = Canary(np.zeros((1, 32, 32, 3), np.uint8), np.full((1, 10), 0.1))
    record = VersionRecord("f" * 64, "classic", 0.5, "run", DATASET, "t")
    with pytest.raises(ValueError, match="no longer has the sha256"):
        stage_next_version(registry, model, record, {}, labels, labels, canary)
    assert not (registry / ".staging").exists() and champion_score(registry) is None  # nothing half-registered


@pytest.mark.parametrize(
    ("data_set", "words"),
    [
        ({"label_names": ("ant", "bee", "wasp")}, "3 classes (ant, bee, wasp) at 32×32"),
        (
            {"image_size": 64},
            "10 classes (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck) at 64×64",
        ),
    ],
)
def test_a_champion_is_never_compared_with_a_model_of_another_data_set(tmp_path, labels, data_set, words):
    from types import SimpleNamespace

    from cifarflow.promotion.promote import PromotionRefused, promote_challenger

    registry = tmp_path / "registry"
    model, model_id = write_model(tmp_path / "a" / "model.keras", b"champion")
    champion = make_score(labels, labels, model_id)
    register_fake(registry, model, champion, decide(champion, None))
    before = sorted((p.relative_to(registry), p.read_bytes()) for p in registry.rglob("*") if p.is_file())
    challenger = replace(make_score(labels, labels, "c" * 64), **data_set)
    report = SimpleNamespace(directory=tmp_path / "report", report_path=tmp_path / "report" / "report.md")
    with pytest.raises(PromotionRefused) as refused:
        promote_challenger(challenger, model, report, registry, 0.05, "key", canary=None, log=lambda _: None)
    assert str(refused.value) == (
        f"the champion v1 in {registry} classifies 10 classes (airplane, automobile, bird, cat, deer, dog, frog, "
        f"horse, ship, truck) at 32×32, this run's model {words}: a champion is never compared with a model of "
        f"another data set; use another --data-dir for this data set (or move {registry} away to start anew)"
    )
    after = sorted((p.relative_to(registry), p.read_bytes()) for p in registry.rglob("*") if p.is_file())
    assert after == before and not (tmp_path / "report").exists()  # refused before any write
    assert read_decisions(registry) == []


def test_score_from_evaluation_uses_argmax_of_saved_probabilities(tmp_path, labels):
    predicted = with_accuracy(labels, np.arange(1000) % 4 != 0)
    np.save(tmp_path / "probabilities.npy", one_hot(predicted))
    (tmp_path / "metrics.json").write_text(json.dumps(compute_metrics(labels, one_hot(predicted), CLASSES)))
    facts = {"model_id": "a", "run_name": "r", "preset": "classic", "dataset_version": DATASET, "test_set_sha256": "t"}
    score = score_from_evaluation(tmp_path, tmp_path / "metrics.json", labels, **facts)
    assert score.accuracy == pytest.approx(0.75)
    with pytest.raises(ValueError, match="predictions for"):
        score_from_evaluation(tmp_path, tmp_path / "metrics.json", labels[:10], **facts)


# ------------------------------------ the report --------------------------------------------


def test_report_section_shows_accuracy_f1_deltas_and_the_diff_plot(labels):
    idx = np.arange(1000)
    champion = make_score(labels, with_accuracy(labels, idx % 100 < 61), "a" * 64, run="run-a")
    challenger = make_score(labels, with_accuracy(labels, idx % 100 < 70), "b" * 64, run="run-b")
    decision = decide(challenger, champion)
    text = comparison_markdown(decision, challenger, champion, "confusion_diff.png")
    assert "## Champion vs challenger" in text and decision.summary in text
    assert "| test accuracy | 0.6100 | 0.7000 |" in text
    assert "### Per-class F1" in text and text.count("| +0.") + text.count("| -0.") >= 1
    for name in CLASSES:
        assert f"| {name} |" in text
    assert "![confusion matrix change](confusion_diff.png)" in text
    diff = confusion_difference(challenger, champion)
    assert diff.sum() == 0 and np.trace(diff) == 90  # 90 more images on the diagonal


def test_first_run_section_names_the_new_champion(labels):
    score = make_score(labels, labels, "c" * 64)
    text = comparison_markdown(decide(score, None), score, None)
    assert "first champion" in text and "cccccccccccc" in text and "Per-class" not in text


def test_section_is_replaced_not_duplicated(tmp_path):
    report = tmp_path / "report.md"
    report.write_text("# Run\n\nbody\n")
    write_section(report, "## Champion vs challenger\n\nfirst\n")
    write_section(report, "## Champion vs challenger\n\nsecond\n")
    text = report.read_text()
    assert text.count(SECTION_BEGIN) == 1 and text.count(SECTION_END) == 1
    assert "second" in text and "first" not in text and text.startswith("# Run\n\nbody\n")
    assert with_section(text, "## Champion vs challenger\n\nsecond\n") == text


# ------------------------------------ in the flow -------------------------------------------


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.state.name for run in runs}


def test_flow_promotes_first_then_is_cached_then_judges_a_new_model(prefect_server, tiny_config):
    from flows.cifar_flow import cifar_pipeline

    registry = tiny_config.layout.registry
    first = cifar_pipeline(config=tiny_config, return_state=True)
    assert first.is_completed()
    states = _task_states(first.state_details.flow_run_id)
    assert states["promote-classic"] == "Completed"
    champion = current_champion_id(registry)
    assert champion != NO_CHAMPION
    report_dir = Path(first.result()["report"])
    report = (report_dir / "report.md").read_text()
    assert "## Champion vs challenger" in report and "promoted: first champion" in report
    assert json.loads((report_dir / "promotion.json").read_text())["decision"]["reason"] == "first"

    second = cifar_pipeline(config=tiny_config, return_state=True)
    states = _task_states(second.state_details.flow_run_id)
    assert set(states.values()) == {"Cached"}, states
    assert current_champion_id(registry) == champion and len(read_decisions(registry)) == 1

    # a registry wiped behind Prefect's back is noticed: the cached decision is not trusted
    import shutil

    shutil.rmtree(registry)
    third = cifar_pipeline(config=tiny_config, return_state=True)
    assert _task_states(third.state_details.flow_run_id)["promote-classic"] == "Completed"
    assert current_champion_id(registry) == champion

    # a new challenger (another seed) is judged against the champion on the same test images
    challenger_config = tiny_config.model_copy(update={"seed": 7, "epochs": 2})
    fourth = cifar_pipeline(config=challenger_config, return_state=True)
    assert _task_states(fourth.state_details.flow_run_id)["promote-classic"] == "Completed"
    decision = json.loads((Path(fourth.result()["report"]) / "promotion.json").read_text())["decision"]
    assert decision["reason"] in {"better", "not-better"} and decision["champion_id"] == champion
    assert decision["summary"].startswith(("promoted: ", "kept champion: difference "))
    report = (Path(fourth.result()["report"]) / "report.md").read_text()
    assert "### Per-class F1" in report and "![confusion matrix change](confusion_diff.png)" in report
    assert (Path(fourth.result()["report"]) / "confusion_diff.png").stat().st_size > 1000
    assert len(read_decisions(registry)) == 2  # the wipe removed the first run's line


def test_the_promotion_artifact_names_the_champion_by_its_version_as_the_logs_do():
    from cifarflow.orchestration.artifacts import promotion_markdown
    from tests.markdown_check import RENDERER, visible

    decision = {"promoted": True, "summary": "promoted: 0.612 → 0.701, p < 0.001", "resulting_champion": "ab" * 32}
    text = promotion_markdown({"decision": decision, "champion_version": "v2"})
    assert "Champion now: **v2** (model sha256 `abababababab`)." in text  # `champion is now v2 (…)` in the log
    assert "promoted: 0.612 → 0.701, p < 0.001" in visible(RENDERER.render(text))
    kept = {"promoted": False, "summary": "kept no champion: …", "resulting_champion": "none"}
    assert "Champion now: `none`." in promotion_markdown({"decision": kept, "champion_version": None})


def test_report_section_names_the_champion_by_its_version(labels):
    idx = np.arange(1000)
    champion = replace(make_score(labels, with_accuracy(labels, idx % 100 < 61), "a" * 64), version="v3")
    challenger = make_score(labels, with_accuracy(labels, idx % 100 < 70), "b" * 64)
    text = comparison_markdown(decide(challenger, champion), challenger, champion)
    assert "| version | v3 | new |" in text


def test_the_report_names_the_data_set_by_its_source_with_classes_size_and_split():
    from cifarflow.data.ingest import dataset_name, model_name
    from cifarflow.data.shards import describe_split
    from cifarflow.reporting.report import describe_dataset

    assert dataset_name({"kind": "cifar-archive", "uri": "https://example.org/cifar-10-python.tar.gz"}) == "CIFAR-10"
    assert dataset_name({"kind": "folder", "uri": "/home/me/photos/fruit/"}) == "fruit"
    assert dataset_name({"kind": "folder", "uri": "../shared/datasets/cifar10-jpeg.tar.gz"}) == "cifar10-jpeg"
    assert dataset_name({"kind": "folder", "uri": "birds.zip"}) == "birds"
    assert model_name({"kind": "cifar-archive", "uri": "cifar-10-python.tar.gz"}) == "cifar-10"  # the /v2 name
    assert model_name({"kind": "folder", "uri": "../shared/datasets/cifar10-jpeg.tar.gz"}) == "cifar10-jpeg"
    assert model_name({"kind": "folder", "uri": "/x/Été Photos/"}) == "etephotos"  # ASCII, no spaces: a URL segment
    assert model_name({"kind": "folder", "uri": "/x/猫/"}) == model_name(None) == "classifier"
    card = {"dataset_name": "fruit", "label_names": ["quince", "apricot", "medlar"], "image_size": 64}
    assert describe_dataset(card) == "fruit: 3 classes (quince, apricot, medlar) at 64×64 px"
    assert describe_dataset(card, named=False) == "fruit: 3 classes at 64×64 px"
    held_out = {"method": "held-out", "test_fraction": 1 / 6, "split_seed": 3}
    assert describe_split(held_out) == "held out 0.167 of each class as test (split seed 3)"
    assert describe_split({"method": "given"}) == "as given by the source (its own train and test images)"


@pytest.mark.parametrize("classes", [2, 120])
def test_the_confusion_matrix_grows_with_the_classes_and_names_them_while_readable(tmp_path, classes):
    from PIL import Image

    from cifarflow.evaluation.plots import MAX_LABELLED, confusion_matrix_plot

    matrix = np.random.default_rng(0).integers(0, 50, (classes, classes))
    names = [f"class {i}" for i in range(classes)]
    path = confusion_matrix_plot(matrix, names, tmp_path / "confusion.png")
    width, height = Image.open(path).size
    assert 600 < width and 500 < height < 2200  # 18 inches at most
    if classes > MAX_LABELLED:
        assert width > 1500  # 120 cells need room, without their names or counts
    small = Image.open(confusion_matrix_plot(matrix[:2, :2], names[:2], tmp_path / "two.png")).size
    assert classes == 2 or width > small[0]
