"""Champion/challenger: keep the best model so far, and replace it only when a new model (the
challenger) is *significantly* better on the very same test images.

Plain functions, no Prefect: the `promote` task in `tasks/promote.py` is a thin wrapper. The statistics
are in `mcnemar.py`, the rule in `decision.py`, the report section in `section.py`; the versions and
the `champion` alias live in the model registry (`cifarflow/registry/store.py`); this module reads the
champion from it as a `Score` and records decisions.

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

A promoted model becomes a new registry version only after its exported artifact passed the smoke
test (`cifarflow/registry/build.py`); a model a person rolled back from is not promoted again by a
later run (`promote.py`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.files import read_json
from cifarflow.promotion.decision import NO_CHAMPION, Decision, Score
from cifarflow.registry import store


def read_champion_record(registry: Path) -> dict[str, Any] | None:
    """version.json of the current champion, or None when there is none."""
    version = store.read_champion_version(registry)
    return version.record if version else None


def read_champion(registry: Path) -> Score | None:
    version = store.read_champion_version(registry)
    if version is None:
        return None
    record, directory = version.record, version.directory
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
    version = store.read_champion_version(registry)
    record = version.record if version else None
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
    return str(version.model_path), note | {"champion_version": version.name}


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


def version_record(
    challenger: Score, decision: Decision, label_names: list[str], model_path: Path, now: datetime
) -> dict[str, Any]:
    """What version.json says about a promoted challenger (the registry adds its name and smoke test)."""
    return {
        "id": challenger.model_id,
        "run_name": challenger.run_name,
        "model": challenger.model,
        "accuracy": challenger.accuracy,
        "label_names": list(label_names),
        "dataset_sha256": challenger.dataset_sha256,
        "batch_ids": list(challenger.batch_ids),
        "normalization": challenger.normalization,
        "test_set_sha256": challenger.test_set_sha256,
        "test_images": int(len(challenger.labels)),
        "promoted_at": now.isoformat(timespec="seconds"),
        "replaced": decision.champion_id,
        "decision": decision.summary,
        "source_model": str(model_path),
    }


def record_decision(registry: Path, decision: Decision, run_name: str, now: datetime | None = None) -> None:
    """Append the decision to decisions.jsonl (one line, one write: whole or absent)."""
    at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    store.append_line(Path(registry) / "decisions.jsonl", {"at": at, "run_name": run_name} | decision.to_json())


def read_decisions(registry: Path) -> list[dict[str, Any]]:
    return store.read_lines(Path(registry) / "decisions.jsonl")
