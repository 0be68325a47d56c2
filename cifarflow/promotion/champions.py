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
from cifarflow.registry.records import RegistryDamaged, append_line, read_lines, version_fix


def read_champion(registry: Path) -> Score | None:
    """The champion as a Score, or None when there is none yet; RegistryDamaged (which names the file
    and what to do) when the champion or the alias is damaged."""
    version = store.read_champion_version(registry)
    if version is None:
        return None
    try:
        predictions = np.load(version.directory / "predictions.npy").astype(np.int64)
        labels = np.load(version.directory / "labels.npy").astype(np.int64)
        metrics = read_json(version.directory / "metrics.json")
    except (OSError, ValueError) as error:  # a truncated .npy or metrics.json
        damage = f"{type(error).__name__}: {error}"
        raise RegistryDamaged(version.directory, damage, version_fix(version.directory), version.name) from None
    return Score(
        model_id=version.model_id,
        run_name=version.run_name,
        model=version.preset,
        dataset_sha256=version.dataset_sha256,
        test_set_sha256=version.test_set_sha256,
        predictions=predictions,
        labels=labels,
        metrics=metrics,
        batch_ids=version.batch_ids,
        normalization=version.normalization,
    )


def champion_id(registry: Path) -> str:
    """The champion's model id, or NO_CHAMPION; RegistryDamaged when it is damaged."""
    version = store.read_champion_version(registry)
    return version.model_id if version else NO_CHAMPION


def warm_start_source(
    registry: Path, model: str, normalization: str, batch_ids: tuple[str, ...]
) -> tuple[str | None, dict]:
    """The champion's model file to start training `model` from, and what to record about it. Only a
    champion of the same preset, trained under the same kind of fitted transform and on data that is
    all still in the training set (no withdrawn batch), can serve; the trainer then also checks the
    weights shape by shape. RegistryDamaged when the champion is damaged."""
    version = store.read_champion_version(registry)
    note = {"requested": "champion", "champion_id": version.model_id if version else None, "applied": False}
    if version is None:
        return None, note | {"reason": "no champion yet"}
    if version.preset != model:
        return None, note | {"reason": f"the champion is a `{version.preset}` model, this run trains `{model}`"}
    if version.normalization != normalization:
        return None, note | {
            "reason": f"the champion's inputs were normalized as `{version.normalization}`, this run's as "
            f"`{normalization}`"
        }
    withdrawn = sorted(set(version.batch_ids) - set(batch_ids))
    if withdrawn:
        return None, note | {"reason": f"the champion was trained on withdrawn batch {', '.join(withdrawn)}"}
    return str(version.model_path), note | {"champion_version": version.name}


def baseline_id(registry: Path, challenger_id: str) -> str:
    """The champion a challenger is (or was) judged against: the current champion, or, when the
    challenger is the champion already, the one it replaced. Identical reruns therefore see the
    same baseline as the run that promoted the model, which keeps their cache key stable.
    RegistryDamaged when the champion is damaged."""
    version = store.read_champion_version(registry)
    if version is None:
        return NO_CHAMPION
    if version.model_id == challenger_id:
        return version.replaced or NO_CHAMPION
    return version.model_id


def version_record(
    challenger: Score,
    decision: Decision,
    label_names: list[str],
    model_path: Path,
    now: datetime,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """What version.json says about a promoted challenger (the registry adds its name and smoke test).
    `source_model` is recorded relative to `data_dir` when it lies in it: nothing in the registry
    names an absolute path, so a data dir can move."""
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
        "source_model": _relative(model_path, data_dir),
    }


def record_decision(registry: Path, decision: Decision, run_name: str, now: datetime | None = None) -> None:
    """Append the decision to decisions.jsonl (one line, one write: whole or absent)."""
    at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    append_line(Path(registry) / "decisions.jsonl", {"at": at, "run_name": run_name} | decision.to_json())


def read_decisions(registry: Path) -> list[dict[str, Any]]:
    """Every decision, oldest first (a line that is not a whole record is skipped: see store.problems)."""
    return read_lines(Path(registry) / "decisions.jsonl")[0]


def _relative(path: Path, root: Path | None) -> str:
    path = Path(path)
    if root is not None and path.is_absolute() and path.is_relative_to(Path(root).resolve()):
        return str(path.relative_to(Path(root).resolve()))
    return str(path)
