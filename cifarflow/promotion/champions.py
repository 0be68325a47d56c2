"""Champion/challenger: keep the best model so far in a registry, and replace it only when a new
model (the challenger) is *significantly* better on the very same test images.

Plain functions, no Prefect: the `promote` task in `tasks/promote.py` is a thin wrapper. The statistics
are in `mcnemar.py`, the rule in `decision.py`, the report section in `section.py`; this module keeps
the registry.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.files import atomic_directory, file_digest, read_json, write_json
from cifarflow.promotion.decision import NO_CHAMPION, Decision, Score


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
        batch_ids=tuple(record.get("batch_ids", ())),
        normalization=record.get("normalization"),
    )


def champion_id(registry: Path) -> str:
    record = read_champion_record(registry)
    return record["id"] if record else NO_CHAMPION


def warm_start_source(
    registry: Path, model: str, normalization: str, batch_ids: tuple[str, ...]
) -> tuple[str | None, dict]:
    """The champion's model file to start training `model` from, and what to record about it. Only a
    champion of the same preset, trained under the same kind of fitted transform and on data that is
    all still in the training set (no withdrawn batch), can serve; the trainer then also checks the
    weights shape by shape."""
    record = read_champion_record(registry)
    note = {"requested": "champion", "champion_id": record["id"] if record else None, "applied": False}
    if record is None:
        return None, note | {"reason": "no champion yet"}
    if record["model"] != model:
        return None, note | {"reason": f"the champion is a `{record['model']}` model, this run trains `{model}`"}
    if record.get("normalization") != normalization:
        return None, note | {
            "reason": f"the champion's inputs were normalized as `{record.get('normalization')}`, this run's as "
            f"`{normalization}`"
        }
    withdrawn = sorted(set(record.get("batch_ids", ())) - set(batch_ids))
    if withdrawn:
        return None, note | {"reason": f"the champion was trained on withdrawn batch {', '.join(withdrawn)}"}
    return str(champion_dir(registry) / record.get("model_file", "model.keras")), note


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
                "batch_ids": list(challenger.batch_ids),
                "normalization": challenger.normalization,
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
