"""Champion/challenger: keep the best model so far in a registry, and replace it only when a new
model (the challenger) is *significantly* better on the very same test images.

Plain functions, no Prefect: the `promote` task in `tasks.promote_task` is a thin wrapper.

The registry lives in `<data dir>/registry/`:

    champion/              the current champion, replaced whole and atomically
        model.keras        a copy of the model file
        champion.json      who it is: model sha256, run, accuracy, test-set identity, why it was promoted
        metrics.json       its evaluation metrics (per-class report, confusion matrix)
        predictions.npy    its predicted label for every test image (int16)
        labels.npy         the true labels of that test set (int16)
    history/<promoted_at>-<id>/   every earlier champion, as it was when it was replaced
    decisions.jsonl        one JSON line per decision, promoted or not

The rule (`decide`):

* no champion yet: the challenger is promoted (first run);
* the challenger *is* the champion (same model sha256): nothing changes;
* champion and challenger were scored on the same test set (the same test images and labels in
  the same order, `test_set_id`): McNemar's test on the paired per-image correctness; promote only if the
  challenger is more accurate and p < alpha (default 0.05; exact binomial test by default,
  mid-p optionally);
* the test sets differ (the data changed): a paired test is impossible and the accuracies
  are not comparable, so the challenger, the only model scored on the current data, is promoted,
  and the decision says so.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tasks.files import atomic_directory, atomic_path, file_digest, read_json, text_digest, write_json

DEFAULT_ALPHA = 0.05
Method = Literal["exact", "midp"]
NO_CHAMPION = "none"
SECTION_BEGIN = "<!-- champion-challenger:begin -->"
SECTION_END = "<!-- champion-challenger:end -->"


# ------------------------------------ the statistics --------------------------------------


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on paired correctness. Only discordant images carry information:
    `champion_only` were right for the champion and wrong for the challenger; `challenger_only`
    the other way round. Under H0 (equal accuracy) each discordant image is a fair coin."""

    champion_only: int
    challenger_only: int
    p_value: float
    method: Method

    @property
    def discordant(self) -> int:
        return self.champion_only + self.challenger_only


def mcnemar_test(champion_correct: np.ndarray, challenger_correct: np.ndarray, method: Method = "exact") -> McNemar:
    """Two-sided exact (binomial) McNemar test, or its mid-p variant (less conservative)."""
    from scipy.stats import binom

    champion_correct = np.asarray(champion_correct, dtype=bool)
    challenger_correct = np.asarray(challenger_correct, dtype=bool)
    if champion_correct.shape != challenger_correct.shape:
        raise ValueError(f"paired test needs equal shapes, got {champion_correct.shape} and {challenger_correct.shape}")
    b = int(np.sum(champion_correct & ~challenger_correct))
    c = int(np.sum(~champion_correct & challenger_correct))
    n, k = b + c, min(b, c)
    if n == 0:
        p = 1.0
    else:
        p = min(1.0, 2.0 * float(binom.cdf(k, n, 0.5)))
        if method == "midp":
            p = max(0.0, p - float(binom.pmf(k, n, 0.5)))
        elif method != "exact":
            raise ValueError(f"unknown McNemar method {method!r}; use 'exact' or 'midp'")
    return McNemar(b, c, p, method)


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


# ------------------------------------ the two models --------------------------------------


@dataclass(frozen=True)
class Score:
    """A model's identity and its per-image results on one test set."""

    model_id: str  # sha256 of the model file
    run_name: str
    model: str  # preset name
    dataset_sha256: str  # the ingested dataset (shown; depends on the shard layout too)
    test_set_sha256: str  # the test images and labels, in order: what pairing needs (see `test_set_id`)
    predictions: np.ndarray = field(repr=False)  # predicted label per test image
    labels: np.ndarray = field(repr=False)  # true label per test image
    metrics: dict[str, Any] = field(repr=False)  # evaluation metrics.json

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.predictions == self.labels)) if len(self.labels) else 0.0

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.labels


def labels_digest(labels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).tobytes()).hexdigest()


def test_set_id(features_dir: Path) -> str:
    """Identity of a feature set's test split: the sha256 of its raw test pixels and labels (from
    meta.json), the same whatever the normalization or shard size, different if any image differs."""
    files = read_json(Path(features_dir) / "meta.json")["files"]
    return text_digest(files["pixels_test.npy"], files["labels_test.npy"])


def score_from_evaluation(
    evaluation_dir: Path,
    labels: np.ndarray,
    *,
    model_id: str,
    run_name: str,
    model: str,
    dataset_sha256: str,
    test_set_sha256: str,
) -> Score:
    """The challenger's score from an evaluation directory (probabilities.npy + metrics.json)."""
    probabilities = np.load(Path(evaluation_dir) / "probabilities.npy", mmap_mode="r")
    labels = np.asarray(labels).astype(np.int64)
    if len(probabilities) != len(labels):
        raise ValueError(f"{evaluation_dir}: {len(probabilities)} predictions for {len(labels)} test labels")
    return Score(
        model_id=model_id,
        run_name=run_name,
        model=model,
        dataset_sha256=dataset_sha256,
        test_set_sha256=test_set_sha256,
        predictions=np.asarray(probabilities).argmax(axis=1).astype(np.int64),
        labels=labels,
        metrics=read_json(Path(evaluation_dir) / "metrics.json"),
    )


# ------------------------------------ the decision ----------------------------------------


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str  # first | already-champion | better | not-better | test-set-changed
    summary: str  # one line: "promoted: 0.612 → 0.701, p < 0.001"
    challenger_id: str
    champion_id: str | None  # the champion it was compared with (None on the first run)
    challenger_accuracy: float
    champion_accuracy: float | None
    comparable: bool  # both scored on the same test images
    alpha: float
    test: McNemar | None = None

    @property
    def resulting_champion(self) -> str:
        return self.challenger_id if self.promoted else (self.champion_id or NO_CHAMPION)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["resulting_champion"] = self.resulting_champion
        return data


def decide(
    challenger: Score, champion: Score | None, alpha: float = DEFAULT_ALPHA, method: Method = "exact"
) -> Decision:
    """Promote the challenger or keep the champion, with the reason in words."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    common = {"challenger_id": challenger.model_id, "challenger_accuracy": challenger.accuracy, "alpha": alpha}
    if champion is None:
        return Decision(
            True,
            "first",
            f"promoted: first champion (test accuracy {challenger.accuracy:.3f})",
            champion_id=None,
            champion_accuracy=None,
            comparable=False,
            **common,
        )
    common |= {"champion_id": champion.model_id, "champion_accuracy": champion.accuracy}
    if champion.model_id == challenger.model_id:
        return Decision(
            False,
            "already-champion",
            f"kept champion: the challenger is the champion already (accuracy {champion.accuracy:.3f})",
            comparable=True,
            **common,
        )
    if champion.test_set_sha256 != challenger.test_set_sha256 or len(champion.labels) != len(challenger.labels):
        return Decision(
            True,
            "test-set-changed",
            f"promoted: the test set changed (test images {champion.test_set_sha256[:12]}… → "
            f"{challenger.test_set_sha256[:12]}…), so no paired comparison is possible; the challenger is the "
            f"only model scored on the current data ({challenger.accuracy:.3f}; the champion had "
            f"{champion.accuracy:.3f} on its own test set)",
            comparable=False,
            **common,
        )
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


# ------------------------------------ the registry ----------------------------------------


def champion_dir(registry: Path) -> Path:
    return Path(registry) / "champion"


def read_champion_record(registry: Path) -> dict[str, Any] | None:
    """champion.json of the current champion, or None when there is none (or it is not whole)."""
    directory = champion_dir(registry)
    try:
        record = read_json(directory / "champion.json")
    except (OSError, ValueError):
        return None
    model = directory / record.get("model_file", "model.keras")
    if not model.is_file() or not all(
        (directory / f).is_file() for f in ("predictions.npy", "labels.npy", "metrics.json")
    ):
        return None
    return record


def read_champion(registry: Path) -> Score | None:
    record = read_champion_record(registry)
    if record is None:
        return None
    directory = champion_dir(registry)
    return Score(
        model_id=record["id"],
        run_name=record["run_name"],
        model=record["model"],
        dataset_sha256=record["dataset_sha256"],
        test_set_sha256=record["test_set_sha256"],
        predictions=np.load(directory / "predictions.npy").astype(np.int64),
        labels=np.load(directory / "labels.npy").astype(np.int64),
        metrics=read_json(directory / "metrics.json"),
    )


def champion_id(registry: Path) -> str:
    record = read_champion_record(registry)
    return record["id"] if record else NO_CHAMPION


def baseline_id(registry: Path, challenger_id: str) -> str:
    """The champion a challenger is (or was) judged against: the current champion, or, when the
    challenger is the champion already, the one it replaced. Identical reruns therefore see the
    same baseline as the run that promoted the model, which keeps their cache key stable."""
    record = read_champion_record(registry)
    if record is None:
        return NO_CHAMPION
    if record["id"] == challenger_id:
        return record.get("replaced") or NO_CHAMPION
    return record["id"]


def install_champion(
    registry: Path, model_path: Path, challenger: Score, decision: Decision, now: datetime | None = None
) -> Path:
    """Make the challenger the champion: the old champion is copied to history first, then the new
    champion directory replaces the old one in one rename (readers never see half of either)."""
    if not decision.promoted:
        raise ValueError("install_champion called for a decision that keeps the champion")
    registry = Path(registry)
    now = now or datetime.now(UTC)
    previous = read_champion_record(registry)
    if previous is not None:
        try:
            stamp = datetime.fromisoformat(previous["promoted_at"]).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        except (KeyError, TypeError, ValueError):
            stamp = "unknown"
        retired = registry / "history" / f"{stamp}-{previous['id'][:12]}"
        if not retired.exists():
            with atomic_directory(retired) as staging:
                shutil.copytree(champion_dir(registry), staging, dirs_exist_ok=True)
                write_json(
                    staging / "retired.json",
                    {"retired_at": now.isoformat(timespec="seconds"), "replaced_by": challenger.model_id},
                )
    with atomic_directory(champion_dir(registry)) as staging:
        shutil.copy2(model_path, staging / "model.keras")
        if file_digest(staging / "model.keras") != challenger.model_id:
            raise ValueError(f"{model_path} does not match the challenger's sha256 {challenger.model_id}")
        np.save(staging / "predictions.npy", challenger.predictions.astype(np.int16))
        np.save(staging / "labels.npy", challenger.labels.astype(np.int16))
        write_json(staging / "metrics.json", challenger.metrics)
        write_json(
            staging / "champion.json",
            {
                "id": challenger.model_id,
                "model_file": "model.keras",
                "run_name": challenger.run_name,
                "model": challenger.model,
                "accuracy": challenger.accuracy,
                "dataset_sha256": challenger.dataset_sha256,
                "test_set_sha256": challenger.test_set_sha256,
                "test_images": int(len(challenger.labels)),
                "promoted_at": now.isoformat(timespec="seconds"),
                "replaced": previous["id"] if previous else None,
                "decision": decision.summary,
                "source_model": str(model_path),
            },
        )
    return champion_dir(registry)


def record_decision(registry: Path, decision: Decision, run_name: str, now: datetime | None = None) -> None:
    """Append the decision to decisions.jsonl (one line, one write: whole or absent)."""
    registry = Path(registry)
    registry.mkdir(parents=True, exist_ok=True)
    line = json.dumps(
        {"at": (now or datetime.now(UTC)).isoformat(timespec="seconds"), "run_name": run_name} | decision.to_json(),
        sort_keys=True,
        default=str,
    )
    fd = os.open(registry / "decisions.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_decisions(registry: Path) -> list[dict[str, Any]]:
    path = Path(registry) / "decisions.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# ------------------------------------ the report ------------------------------------------


def confusion_difference(challenger: Score, champion: Score) -> np.ndarray:
    """Challenger − champion confusion matrix: positive on the diagonal = more right answers."""
    return np.array(challenger.metrics["confusion_matrix"], dtype=np.int64) - np.array(
        champion.metrics["confusion_matrix"], dtype=np.int64
    )


def f1_rows(challenger: Score, champion: Score | None) -> list[dict[str, Any]]:
    rows = []
    report = challenger.metrics["classification_report"]
    old = champion.metrics["classification_report"] if champion is not None else {}
    for name in challenger.metrics["class_names"]:
        new_f1 = report[name]["f1-score"]
        old_f1 = old[name]["f1-score"] if name in old else None
        rows.append(
            {
                "class": name,
                "champion_f1": None if old_f1 is None else round(old_f1, 4),
                "challenger_f1": round(new_f1, 4),
                "delta": None if old_f1 is None else round(new_f1 - old_f1, 4),
            }
        )
    return rows


def comparison_markdown(
    decision: Decision, challenger: Score, champion: Score | None, diff_plot: str | None = None
) -> str:
    """The report's champion-vs-challenger section (no surrounding markers)."""
    lines = [
        "## Champion vs challenger",
        "",
        f"**Decision:** {decision.summary}.",
        "",
    ]
    if champion is None:
        lines += [f"No champion yet: this model (`{challenger.model_id[:12]}`) becomes the first one.", ""]
        return "\n".join(lines)
    lines += [
        "| | champion | challenger |",
        "|---|---|---|",
        f"| run | `{champion.run_name}` | `{challenger.run_name}` |",
        f"| model | `{champion.model}` | `{challenger.model}` |",
        f"| model sha256 | `{champion.model_id[:12]}` | `{challenger.model_id[:12]}` |",
        f"| test accuracy | {champion.accuracy:.4f} | {challenger.accuracy:.4f} |",
        f"| test images | {len(champion.labels)} | {len(challenger.labels)} |",
    ]
    if decision.test is not None:
        t = decision.test
        lines += [
            "",
            f"McNemar's test ({t.method}, two-sided) on the {len(challenger.labels)} paired test images: "
            f"{t.challenger_only} right only for the challenger, {t.champion_only} right only for the champion, "
            f"{format_p(t.p_value)} (promotion needs a higher accuracy and p < {decision.alpha:g}).",
        ]
    if not decision.comparable:
        lines += ["", "The two models were scored on different test sets: the deltas below compare different data."]
    rows = f1_rows(challenger, champion)
    lines += ["", "### Per-class F1", "", "| class | champion | challenger | Δ |", "|---|---|---|---|"]
    for r in rows:
        old = "–" if r["champion_f1"] is None else f"{r['champion_f1']:.3f}"
        delta = "–" if r["delta"] is None else f"{r['delta']:+.3f}"
        lines.append(f"| {r['class']} | {old} | {r['challenger_f1']:.3f} | {delta} |")
    if diff_plot:
        lines += [
            "",
            "### Confusion-matrix change (challenger − champion)",
            "",
            "Each cell: how many more (blue) or fewer (red) test images the challenger puts there. "
            "Blue on the diagonal and red off it are improvements.",
            "",
            f"![confusion matrix change]({diff_plot})",
        ]
    return "\n".join(lines) + "\n"


def with_section(markdown: str, section: str) -> str:
    """`markdown` with the champion/challenger section replaced (or appended): idempotent."""
    block = f"{SECTION_BEGIN}\n{section.rstrip()}\n{SECTION_END}\n"
    start, end = markdown.find(SECTION_BEGIN), markdown.find(SECTION_END)
    if start != -1 and end != -1 and end > start:
        return markdown[:start] + block + markdown[end + len(SECTION_END) :].lstrip("\n")
    return markdown.rstrip("\n") + "\n\n" + block


def write_section(report_md: Path, section: str) -> None:
    """Add (or replace) the section in report.md atomically."""
    text = Path(report_md).read_text()
    with atomic_path(report_md) as tmp:
        tmp.write_text(with_section(text, section))
