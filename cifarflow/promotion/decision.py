"""The champion/challenger rule (`decide`): two models' scores on one test set → promote or keep, with the reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.files import read_json, text_digest
from cifarflow.promotion.mcnemar import McNemar, Method, format_p, mcnemar_test

DEFAULT_ALPHA = 0.05
NO_CHAMPION = "none"
# what a Score says of its model under the same names as the registry's VersionRecord
IDENTITY = (
    *("model_id", "run_name", "preset", "dataset_version", "test_set_sha256", "batch_ids", "normalization"),
    *("label_names", "image_size", "dataset"),
)


@dataclass(frozen=True)
class Score:
    """A model's identity and its per-image results on one test set."""

    model_id: str  # sha256 of the model file
    run_name: str
    preset: str  # the preset that built it
    dataset_version: str  # the dataset version it was trained on
    test_set_sha256: str  # the test images and labels, in order: what pairing needs (see `test_set_id`)
    predictions: np.ndarray = field(repr=False)  # predicted label per test image
    labels: np.ndarray = field(repr=False)  # true label per test image
    metrics: dict[str, Any] = field(repr=False)  # evaluation metrics.json
    batch_ids: tuple[str, ...] = ()  # the added batches it was trained on
    normalization: str | None = None  # the fitted transform's kind (a warm start needs the same)
    label_names: tuple[str, ...] = ()  # its classes, in output order
    image_size: int | None = None  # the side of the square images it takes (None: a version registered before)
    dataset: dict[str, Any] | None = None  # the data set it was trained on (features' `dataset`)
    version: str | None = None  # its registry version (v1, v2, …); None for a model not registered

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.predictions == self.labels)) if len(self.labels) else 0.0

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.labels


def test_set_id(features_dir: Path) -> str:
    """A feature set's test split by content (its raw pixels' and labels' sha256), whatever the normalization."""
    files = read_json(Path(features_dir) / "meta.json")["files"]
    return text_digest(files["pixels_test.npy"], files["labels_test.npy"])


def score_from_evaluation(evaluation_dir: Path, metrics_path: Path, labels: np.ndarray, **identity: Any) -> Score:
    """The challenger's score: argmax of `evaluation_dir`/probabilities.npy (N, classes) against `labels` (N,),
    metrics from `metrics_path`, `identity` Score's other fields; ValueError when the counts differ."""
    probabilities = np.load(Path(evaluation_dir) / "probabilities.npy", mmap_mode="r")
    labels = np.asarray(labels).astype(np.int64)
    if len(probabilities) != len(labels):
        raise ValueError(f"{evaluation_dir}: {len(probabilities)} predictions for {len(labels)} test labels")
    predictions = np.asarray(probabilities).argmax(axis=1).astype(np.int64)
    return Score(predictions=predictions, labels=labels, metrics=read_json(Path(metrics_path)), **identity)


@dataclass(frozen=True)
class Decision:
    promoted: bool
    # first | already-champion | champion-data-withdrawn | better | not-better | test-set-changed | below-floor,
    # and from the registry step (promote.py): rolled-back | smoke-test-failed
    reason: str
    summary: str  # one line: "promoted: 0.612 → 0.701, p < 0.001"
    challenger_id: str
    champion_id: str | None  # the champion it was compared with (None on the first run)
    challenger_accuracy: float
    champion_accuracy: float | None
    comparable: bool  # both scored on the same test images
    alpha: float
    test: McNemar | None = None
    min_accuracy: float | None = None  # the promotion floor in force

    @property
    def resulting_champion(self) -> str:
        return self.challenger_id if self.promoted else (self.champion_id or NO_CHAMPION)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["resulting_champion"] = self.resulting_champion
        return data


def decide(
    challenger: Score,
    champion: Score | None,
    alpha: float = DEFAULT_ALPHA,
    method: Method = "exact",
    min_accuracy: float | None = None,
) -> Decision:
    """Promote the challenger or keep the champion, with the reason: no champion: promote; the same model: keep;
    the champion trained on a batch withdrawn since, or other test images: promote; otherwise promote only a more
    accurate challenger with McNemar's p < `alpha` (`method`); never one below `min_accuracy`."""
    decision = compare_with_champion(challenger, champion, alpha, method)
    if decision.promoted and min_accuracy is not None and challenger.accuracy < min_accuracy:
        summary = (
            f"kept {'champion' if champion else 'no champion'}: test accuracy {challenger.accuracy:.3f} is below the "
            f"promotion floor {min_accuracy:g} (--min-accuracy), although it would have been promoted "
            f"({decision.summary.removeprefix('promoted: ')})"
        )
        return replace(decision, promoted=False, reason="below-floor", summary=summary, min_accuracy=min_accuracy)
    return replace(decision, min_accuracy=min_accuracy)


def compare_with_champion(challenger: Score, champion: Score | None, alpha: float, method: Method) -> Decision:
    common = {"challenger_id": challenger.model_id, "challenger_accuracy": challenger.accuracy, "alpha": alpha}
    if champion is None:
        summary = f"promoted: first champion (test accuracy {challenger.accuracy:.3f})"
        return Decision(True, "first", summary, champion_id=None, champion_accuracy=None, comparable=False, **common)
    common |= {"champion_id": champion.model_id, "champion_accuracy": champion.accuracy}
    if champion.model_id == challenger.model_id:
        summary = f"kept champion: the challenger is the champion already (accuracy {champion.accuracy:.3f})"
        return Decision(False, "already-champion", summary, comparable=True, **common)
    same_test_set = champion.test_set_sha256 == challenger.test_set_sha256
    withdrawn = sorted(set(champion.batch_ids) - set(challenger.batch_ids))
    if withdrawn:
        summary = (
            f"promoted: the champion was trained on batch {', '.join(withdrawn)}, withdrawn since, so it no longer "
            f"stands for the data; the challenger ({challenger.accuracy:.3f}, champion {champion.accuracy:.3f}) "
            "replaces it without a significance test"
        )
        return Decision(True, "champion-data-withdrawn", summary, comparable=same_test_set, **common)
    if not same_test_set or len(champion.labels) != len(challenger.labels):
        summary = (
            f"promoted: the test set changed (test images {champion.test_set_sha256[:12]}… → "
            f"{challenger.test_set_sha256[:12]}…), so no paired comparison is possible; the challenger is the "
            f"only model scored on the current data ({challenger.accuracy:.3f}; the champion had "
            f"{champion.accuracy:.3f} on its own test set)"
        )
        return Decision(True, "test-set-changed", summary, comparable=False, **common)
    test = mcnemar_test(champion.correct, challenger.correct, method)
    delta = challenger.accuracy - champion.accuracy
    counts = (
        f"McNemar {method}, {test.challenger_only} images only the challenger got right, "
        f"{test.champion_only} only the champion"
    )
    if delta > 0 and test.p_value < alpha:
        summary = f"promoted: {champion.accuracy:.3f} → {challenger.accuracy:.3f}, {format_p(test.p_value)} ({counts})"
        return Decision(True, "better", summary, comparable=True, test=test, **common)
    why = "not significant" if delta > 0 else "not better"
    summary = (
        f"kept champion: difference {delta:+.3f} ({champion.accuracy:.3f} → {challenger.accuracy:.3f}), "
        f"{format_p(test.p_value)}, {why} at alpha {alpha:g} ({counts})"
    )
    return Decision(False, "not-better", summary, comparable=True, test=test, **common)
