"""From answers to training data: which answers are new, which images they name, which must wait.

The feedback flow (`flows/feedback_flow.py`) takes each prediction's current answer (the last one
given) that it has not handled yet, finds the exact pixels the model saw in the prediction log, and
writes them as an add-images inbox, `<class>/<prediction_id>.png` (PNG: lossless). The add-images
screening then refuses test-set copies and skips duplicates, as for any inbox.

    <data dir>/feedback/exported.json   prediction_id → the answer handled, its verdict, the export
    <data dir>/feedback/exports/<id>/   inbox/ (the exact pixels) and summary.json, report.md

Verdicts: `added` (in the batch), `duplicate` (the training data holds that image already, with
that class), `conflict` (it holds the image with another class: an answer cannot change it,
withdrawing the batch that holds it can), `refused` (a test-set copy, or another reason the screening
gave), `lost` (the prediction log no longer holds the image: it outlived the log's retention). An
answer whose image was not found while some log file could not be read is not judged: it waits for
the next run. Two answers that give one image (the same pixels, served twice) different classes
are held back, not recorded as handled, and listed in the report, until a new answer makes them agree.
"""

from __future__ import annotations

from collections import defaultdict
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

VERDICTS = ("added", "duplicate", "conflict", "refused", "lost")
LOST = "the prediction log no longer holds this image (past its retention)"


@dataclass(frozen=True)
class Ready:
    """An answer whose image is in the log and agrees with every other answer about that image."""

    answer: Answer
    pixels: np.ndarray | None  # (32, 32, 3) uint8; None in a plan read back from a journal (its inbox is written)
    digest: str  # pixel_sha256


@dataclass
class ExportPlan:
    ready: list[Ready] = field(default_factory=list)
    held: list[dict[str, Any]] = field(default_factory=list)  # {pixel_sha256, answers: [{prediction_id, label, …}]}
    lost: list[Answer] = field(default_factory=list)
    waiting: list[Answer] = field(default_factory=list)  # not found while some log file could not be read

    def to_json(self) -> dict[str, Any]:
        """The plan without its pixels, for the export's journal (`from_json` reads it back)."""
        return {
            "ready": [{"answer": asdict(r.answer), "digest": r.digest} for r in self.ready],
            "held": self.held,
            "lost": [asdict(a) for a in self.lost],
            "waiting": [asdict(a) for a in self.waiting],
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> ExportPlan:
        return cls(
            ready=[Ready(Answer(**r["answer"]), None, r["digest"]) for r in record["ready"]],
            held=record["held"],
            lost=[Answer(**a) for a in record["lost"]],
            waiting=[Answer(**a) for a in record["waiting"]],
        )


def read_exported(path: Path, exports: Path) -> dict[str, dict[str, str]]:
    """prediction_id → {answer_id, label, verdict, reason, export_id, pixel_sha256}; {} before the first
    export. PipelineInputError, naming the file, when it is damaged, or missing while `exports` holds
    finished exports: without it every answer would be judged again and the verdicts rewritten."""
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
    """The current answers the flow has not handled: new predictions, and answers given again since."""
    return [a for pid, a in latest.items() if exported.get(pid, {}).get("answer_id") != a.answer_id]


def plan_export(
    latest: dict[str, Answer],
    exported: dict[str, dict[str, str]],
    pixels: dict[str, np.ndarray],
    whole_log: bool = True,
) -> ExportPlan:
    """Sort the pending answers (`pending(latest, exported)`) into ready, held (conflicts) and lost.

    `pixels`: prediction_id → (32, 32, 3) uint8 for the pending answers the log still holds. A conflict
    is one image (pixel digest) whose current answers, handled or not, name more than one class.
    `whole_log`: every log file was read; if not, an answer whose image was not found waits (it may
    be in a file that could not be read) instead of being called lost."""
    plan = ExportPlan()
    todo = pending(latest, exported)
    digests = {pid: record["pixel_sha256"] for pid, record in exported.items() if record.get("pixel_sha256")}
    for answer in todo:
        if answer.prediction_id in pixels:
            digests[answer.prediction_id] = pixel_digest(pixels[answer.prediction_id])
        else:
            (plan.lost if whole_log else plan.waiting).append(answer)
    labels: dict[str, set[str]] = defaultdict(set)
    members: dict[str, list[Answer]] = defaultdict(list)
    for pid, digest in digests.items():
        if pid in latest:
            labels[digest].add(latest[pid].label)
            members[digest].append(latest[pid])
    for answer in todo:
        digest = digests.get(answer.prediction_id)
        if digest is None:
            continue
        if len(labels[digest]) > 1:
            continue  # listed once per image below
        plan.ready.append(Ready(answer, pixels[answer.prediction_id], digest))
    pending_ids = {a.prediction_id for a in todo}
    for digest, answers in members.items():
        if len(labels[digest]) > 1 and any(a.prediction_id in pending_ids for a in answers):
            plan.held.append(
                {
                    "pixel_sha256": digest,
                    "labels": sorted(labels[digest]),
                    "answers": [
                        {
                            "prediction_id": a.prediction_id,
                            "label": a.label,
                            "reviewer": a.reviewer,
                            "time": a.time,
                            "new": a.prediction_id in pending_ids,  # False: handled by an earlier export
                        }
                        for a in answers
                    ],
                }
            )
    return plan


def new_export_id(ready: list[Ready]) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{text_digest([r.answer.answer_id for r in ready])[:8]}"


def unfinished_exports(exports: Path, exported: dict[str, dict[str, str]]) -> list[Path]:
    """Export folders a kill left before the export's journal was written: no summary.json, and no
    handled answer names them (call it holding the export lock, with no journal left to finish)."""
    named = {record["export_id"] for record in exported.values()}
    folders = sorted(d for d in exports.iterdir() if d.is_dir()) if exports.is_dir() else []
    return [d for d in folders if not (d / "summary.json").exists() and d.name not in named]


def write_inbox(inbox: Path, ready: list[Ready]) -> list[Path]:
    """Each ready answer's pixels as `inbox/<class>/<prediction_id>.png`, the folder written whole or not
    at all; the files written."""
    with atomic_directory(inbox) as staging:
        for item in ready:
            folder = staging / item.answer.label
            folder.mkdir(exist_ok=True)
            Image.fromarray(item.pixels).save(folder / f"{item.answer.prediction_id}.png", format="PNG")
    return [inbox / item.answer.label / f"{item.answer.prediction_id}.png" for item in ready]


def screening_verdicts(summary: dict[str, Any], ready: list[Ready]) -> dict[str, tuple[str, str]]:
    """prediction_id → (verdict, reason) from an add-images summary of the inbox `write_inbox` wrote:
    its files are named by prediction id. A file the summary neither rejected nor called a duplicate was added."""
    refused = {Path(r["path"]).stem: r["reason"] for r in summary.get("rejected", [])}
    ids = {item.answer.prediction_id for item in ready}
    duplicates = {Path(d["path"]).stem: d for d in summary.get("duplicate_files", [])}
    verdicts = {}
    for item in ready:
        pid = item.answer.prediction_id
        if pid in refused:
            verdicts[pid] = ("refused", refused[pid])
        elif pid in duplicates:
            verdicts[pid] = duplicate_verdict(duplicates[pid], item.answer.label, ids)
        else:
            verdicts[pid] = ("added", summary.get("batch_id") or "")
    return verdicts


def duplicate_verdict(duplicate: dict[str, str], label: str, exported_ids: set[str]) -> tuple[str, str]:
    """A file the screening found in the data already: the same image answered alike in this export, the
    training data's image with the same class (`duplicate`), or with another one (`conflict`: the answer
    cannot change a label the training data holds; withdrawing that batch can)."""
    of, held_as = duplicate["of"], duplicate.get("label", "")
    if held_as and held_as != label:
        where = (
            f"batch image {of}: withdraw its batch (flows/add_images.py --withdraw) to relabel it"
            if of.startswith("add-")
            else f"{of} of the ingested archive"
        )
        return "conflict", f"the training data holds this image as {held_as}, the answer says {label} ({where})"
    if Path(of).stem in exported_ids:
        return "duplicate", f"the same image as prediction {Path(of).stem}, answered alike in this export"
    return "duplicate", f"the training data holds this image ({of})"


def record_handled(
    path: Path,
    exported: dict[str, dict[str, str]],
    export_id: str,
    ready: list[Ready],
    verdicts: dict[str, tuple[str, str]],
    lost: list[Answer],
) -> dict[str, dict[str, str]]:
    """The handled answers added to `exported`, written atomically to `path` (a kill leaves the old file)."""
    updated = dict(exported)
    for item in ready:
        verdict, reason = verdicts[item.answer.prediction_id]
        updated[item.answer.prediction_id] = handled(item.answer, verdict, reason, export_id, item.digest)
    for answer in lost:
        updated[answer.prediction_id] = handled(answer, "lost", LOST, export_id, "")
    write_json(path, {"answers": updated})
    return updated


def handled(answer: Answer, verdict: str, reason: str, export_id: str, digest: str) -> dict[str, str]:
    """One entry of exported.json: the answer handled (by id, so a later answer is new) and what became of it."""
    return {
        "answer_id": answer.answer_id,
        "label": answer.label,
        "verdict": verdict,
        "reason": reason,
        "export_id": export_id,
        "pixel_sha256": digest,
    }
