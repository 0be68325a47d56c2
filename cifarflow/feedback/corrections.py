"""From answers to training data: each current answer not handled yet, its pixels from the log, as an
add-images inbox `<class>/<prediction_id>.png`; answers giving one image two classes are held back."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cifarflow.data.shards import pixel_digest
from cifarflow.errors import PipelineInputError
from cifarflow.feedback.answers import Answer
from cifarflow.files import atomic_directory, read_json, text_digest, write_json
from cifarflow.markdown import escape

VERDICTS = ("added", "duplicate", "conflict", "refused", "lost")
LOST = "the prediction log no longer holds this image (past its retention)"


@dataclass(frozen=True)
class Ready:
    answer: Answer
    pixels: np.ndarray | None  # (S, S, 3) uint8; None in a plan read back from a journal (its inbox is written)
    digest: str  # pixel_sha256


@dataclass
class ExportPlan:
    ready: list[Ready] = field(default_factory=list)
    held: list[dict[str, Any]] = field(default_factory=list)  # {pixel_sha256, labels, answers: [{prediction_id, …}]}
    lost: list[Answer] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        ready = [{"answer": asdict(r.answer), "digest": r.digest} for r in self.ready]
        return {"ready": ready, "held": self.held, "lost": [asdict(a) for a in self.lost]}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> ExportPlan:
        ready = [Ready(Answer(**r["answer"]), None, r["digest"]) for r in record["ready"]]
        return cls(ready, record["held"], [Answer(**a) for a in record["lost"]])


def read_exported(path: Path, exports: Path) -> dict[str, dict[str, str]]:
    """prediction_id → {answer_id, label, verdict, reason, export_id, pixel_sha256}; {} before the first export.
    PipelineInputError when it is damaged, or missing beside finished exports."""
    if not path.exists():
        finished = sorted(exports.glob("*/summary.json")) if exports.is_dir() else []
        if finished:
            raise PipelineInputError(
                f"{path} is missing, but {len(finished)} earlier exports are in {exports}: restore it from a "
                f"backup (or, to judge every answer again, move {exports} aside); nothing was exported"
            )
        return {}
    try:
        answers = read_json(path)["answers"]
        if not all(isinstance(v, dict) and "answer_id" in v for v in answers.values()):
            raise ValueError("an entry is not a handled answer")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PipelineInputError(
            f"{path} is damaged ({type(error).__name__}: {error}): restore it from a backup; nothing was exported"
        ) from None
    return answers


def pending(latest: dict[str, Answer], exported: dict[str, dict[str, str]]) -> list[Answer]:
    """The current answers not handled yet: new predictions, and answers given again since."""
    return [a for pid, a in latest.items() if exported.get(pid, {}).get("answer_id") != a.answer_id]


def plan_export(
    latest: dict[str, Answer], exported: dict[str, dict[str, str]], pixels: dict[str, np.ndarray]
) -> ExportPlan:
    """The pending answers as ready, held (its image's current answers name two classes) or lost (not in
    `pixels`: prediction_id → (S, S, 3) uint8)."""
    todo = pending(latest, exported)
    new = {a.prediction_id for a in todo}
    digests = {pid: record["pixel_sha256"] for pid, record in exported.items() if record.get("pixel_sha256")}
    digests |= {pid: pixel_digest(image) for pid, image in pixels.items() if pid in new}
    answered: dict[str, list[Answer]] = defaultdict(list)  # digest → the current answers about that image
    for pid, digest in digests.items():
        if pid in latest:
            answered[digest].append(latest[pid])
    labels = {digest: sorted({a.label for a in answers}) for digest, answers in answered.items()}
    plan = ExportPlan(lost=[a for a in todo if a.prediction_id not in pixels])
    for answer in todo:
        digest = digests.get(answer.prediction_id)
        if answer.prediction_id in pixels and len(labels[digest]) == 1:
            plan.ready.append(Ready(answer, pixels[answer.prediction_id], digest))
    for digest, answers in answered.items():
        if len(labels[digest]) > 1 and new & {a.prediction_id for a in answers}:
            given = [
                {"prediction_id": a.prediction_id, "label": a.label, "reviewer": a.reviewer, "time": a.time}
                | {"new": a.prediction_id in new}  # False: handled by an earlier export
                for a in answers
            ]
            plan.held.append({"pixel_sha256": digest, "labels": labels[digest], "answers": given})
    return plan


def new_export_id(ready: list[Ready]) -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{text_digest([r.answer.answer_id for r in ready])[:8]}"


def unfinished_exports(exports: Path, exported: dict[str, dict[str, str]]) -> list[Path]:
    """Export folders a kill left before the journal was written: no summary.json, no handled answer names them."""
    named = {record["export_id"] for record in exported.values()}
    folders = sorted(d for d in exports.iterdir() if d.is_dir()) if exports.is_dir() else []
    return [d for d in folders if not (d / "summary.json").exists() and d.name not in named]


def write_inbox(inbox: Path, ready: list[Ready]) -> None:
    """Each ready answer's pixels as `inbox/<class>/<prediction_id>.png`, the folder written whole or not at all."""
    with atomic_directory(inbox) as staging:
        for item in ready:
            (staging / item.answer.label).mkdir(exist_ok=True)
            Image.fromarray(item.pixels).save(staging / item.answer.label / f"{item.answer.prediction_id}.png")


def screening_verdicts(summary: dict[str, Any], ready: list[Ready]) -> dict[str, tuple[str, str]]:
    """prediction_id → (verdict, reason) from the inbox's add-images summary; neither refused nor duplicate: added."""
    refused = {Path(r["path"]).stem: r["reason"] for r in summary.get("rejected", [])}
    duplicates = {Path(d["path"]).stem: d for d in summary.get("duplicate_files", [])}
    ids = {item.answer.prediction_id for item in ready}
    verdicts = {pid: ("added", summary.get("batch_id") or "") for pid in ids}
    verdicts |= {pid: ("refused", reason) for pid, reason in refused.items() if pid in ids}
    for item in ready:
        pid = item.answer.prediction_id
        if pid in duplicates and pid not in refused:
            verdicts[pid] = duplicate_verdict(duplicates[pid], item.answer.label, ids)
    return verdicts


def duplicate_verdict(duplicate: dict[str, str], label: str, exported_ids: set[str]) -> tuple[str, str]:
    """A file the training data holds already: `duplicate` with the same class, `conflict` with another."""
    of, held_as = duplicate["of"], duplicate.get("label", "")
    if held_as and held_as != label:
        where = f"batch image {of}: withdraw its batch (flows/add_images.py --withdraw) to relabel it"
        where = where if of.startswith("add-") else f"{of} of the ingested archive"
        return "conflict", f"the training data holds this image as {held_as}, the answer says {label} ({where})"
    if Path(of).stem in exported_ids:
        return "duplicate", f"the same image as prediction {Path(of).stem}, answered alike in this export"
    return "duplicate", f"the training data holds this image ({of})"


def outcomes(plan: ExportPlan, addition: dict[str, Any] | None) -> list[dict[str, str]]:
    """Each handled answer: prediction_id, answer_id, label, reviewer, verdict, reason, pixel_sha256."""
    verdicts = screening_verdicts(addition, plan.ready) if addition else {}
    handled = [(r.answer, r.digest, *verdicts[r.answer.prediction_id]) for r in plan.ready]
    handled += [(a, "", "lost", LOST) for a in plan.lost]
    fields = ("prediction_id", "answer_id", "label", "reviewer")
    return [
        {name: getattr(a, name) for name in fields} | {"verdict": verdict, "reason": reason, "pixel_sha256": digest}
        for a, digest, verdict, reason in handled
    ]


def record_handled(path: Path, exported: dict[str, dict[str, str]], export_id: str, answers: list[dict]) -> None:
    """The handled `answers` (`outcomes`) added to exported.json, atomically."""
    keep = ("answer_id", "label", "verdict", "reason", "pixel_sha256")
    handled = {a["prediction_id"]: {k: a[k] for k in keep} | {"export_id": export_id} for a in answers}
    write_json(path, {"answers": exported | handled})


def export_summary(
    export_id: str, plan: ExportPlan, answers: list[dict[str, str]], addition: dict[str, Any] | None
) -> dict[str, Any]:
    """summary.json of one export: `headline`, `counts` per verdict and `held`, the batch, each answer."""
    tally = Counter(a["verdict"] for a in answers)
    counts = {verdict: tally[verdict] for verdict in VERDICTS}
    counts["held"] = sum(a["new"] for c in plan.held for a in c["answers"])  # this run's answers only
    moved = addition is not None and addition["dataset_version"] != addition["previous_dataset_version"]
    batch = f"batch {addition['batch_id']} (dataset version {addition['dataset_version']})" if moved else "no batch"
    headline = (
        f"{len(answers) + counts['held']} answers: {counts['added']} added as {batch}, {counts['duplicate']} "
        f"already in the training data, {counts['conflict']} contradicting it, {counts['refused']} refused, "
        f"{counts['held']} held back (conflicting), {counts['lost']} lost"
    )
    return {
        "export_id": export_id,
        "headline": headline,
        "counts": counts,
        "batch_id": addition["batch_id"] if moved else None,
        "dataset_version": addition["dataset_version"] if addition else None,
        "addition": addition and addition["addition_id"],
        "answers": answers,
        "held": plan.held,
    }


def render_report(summary: dict[str, Any]) -> str:
    """report.md of one export: the counts, each answer not added and why, each image held back."""
    counts = summary["counts"]
    lines = [f"# Feedback export `{summary['export_id']}`", "", escape(summary["headline"]), ""]
    lines += ["| verdict | answers |", "|---|---|"] + [f"| {name} | {count} |" for name, count in counts.items()]
    lines.append("")
    if summary.get("batch_id"):
        lines += [f"Batch `{summary['batch_id']}`: dataset version `{summary['dataset_version']}`.", ""]
    not_added = [a for a in summary["answers"] if a["verdict"] != "added"]
    if not_added:
        lines += ["## Not added", "", "| prediction | label | verdict | why |", "|---|---|---|---|"]
        lines += [
            f"| {escape(a['prediction_id'])} | {escape(a['label'])} | {a['verdict']} | {escape(a['reason'])} |"
            for a in not_added
        ]
        lines.append("")
    if summary["held"]:
        lines += [
            "## Held back: one image, answers that disagree",
            "",
            "Each image below was answered with different classes. It waits until a new answer makes them agree.",
            "",
            "| image (pixel sha256) | answers |",
            "|---|---|",
        ]
        for conflict in summary["held"]:
            given = "; ".join(f"{a['prediction_id']}: {a['label']} ({a['reviewer']})" for a in conflict["answers"])
            lines.append(f"| `{conflict['pixel_sha256'][:16]}…` | {escape(given)} |")
        lines.append("")
    return "\n".join(lines)
