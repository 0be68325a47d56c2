"""The events the product emits, declared once in `EVENTS` (when, and what each payload key means); the triggers
in `deployments/prefect.yaml` listen for them."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.events import emit_event

from cifarflow.files import read_json, write_json
from cifarflow.registry import store

DATASET_UPDATED = "cifar10.dataset.updated"
MODEL_PROMOTED = "cifar10.model.promoted"
MONITOR_DRIFT = "cifar10.monitor.drift"
ANNOUNCED = "announced.json"  # in the registry: {"moves": how many moves of aliases.jsonl have had their event}


@dataclass(frozen=True)
class Event:
    """An event's declaration: when it is emitted, and its payload's keys with their meaning."""

    when: str
    payload: dict[str, str]


DATA_DIR = {"data_dir": "the data directory, an absolute path (what a deployment's trigger passes on)"}
EVENTS = {  # every event the product emits (docs/reference/events.md shows them); `_emit` warns on other keys
    DATASET_UPDATED: Event(
        "a batch of images was added (flows/add_images.py, flows/feedback_flow.py) or withdrawn (--withdraw)",
        DATA_DIR
        | {
            "dataset_version": "the training data's version now",
            "previous_dataset_version": "its version before",
            "batch_id": "the batch added (an addition only)",
            "added": "how many images the batch holds (an addition only)",
            "class_counts": "the batch's images per class (an addition only)",
            "withdrawn": "the batch withdrawn (a withdrawal only)",
            "train_images": "training images now: ingested + added",
        },
    ),
    MODEL_PROMOTED: Event(
        "the champion moved: a promotion by a pipeline run, or `flows/registry_flow.py promote` by hand",
        DATA_DIR
        | {
            "from_version": "the champion before (None: there was none)",
            "to_version": "the champion now",
            "model_id": "the new champion's model id (the sha256 of its model.keras)",
            "from_accuracy": "the test accuracy in the old champion's version.json (None: none, or damaged)",
            "to_accuracy": "the test accuracy in the new champion's version.json",
            "by": "`promotion` or `hand`",
            "reason": "why it moved",
            "at": "when (ISO 8601, UTC)",
        },
    ),
    MONITOR_DRIFT: Event(
        "a monitor run found drift: at least one signal fired",
        DATA_DIR
        | {
            "window": "the window judged: its bounds, rows, first and last time, sources, model versions",
            "images": "how many of its images were judged",
            "model_version": "the champion judged",
            "signals": "the signals that fired: {name: {statistic, threshold or p_value, drift}}",
            "report": "the monitor run's report folder",
        },
    ),
}


def resource_id(event: str, data_dir: str) -> str:
    """The id of what `event` is about: `cifar10.dataset.<data dir>` for `cifar10.dataset.updated`."""
    return f"{event.rsplit('.', 1)[0]}.{data_dir}"


def _emit(event: str, data_dir: str, payload: dict[str, Any]):
    """`event` about the data dir to the server in PREFECT_API_URL (without one, Prefect drops it quietly)."""
    payload = {"data_dir": data_dir} | payload
    if undeclared := payload.keys() - EVENTS[event].payload.keys():  # sent all the same: the move or batch is made
        warnings.warn(f"{event}: payload keys {sorted(undeclared)} are not declared in EVENTS", stacklevel=2)
    resource = {"prefect.resource.id": resource_id(event, data_dir), "prefect.resource.name": data_dir}
    return emit_event(event=event, resource=resource, payload=payload)


def declared_keys(event: str) -> set[str]:
    """The payload keys `EVENTS` declares for `event`, but the data dir every event carries."""
    return EVENTS[event].payload.keys() - DATA_DIR.keys()


def emit_dataset_updated(data_dir: str, facts: dict[str, Any]):
    """`cifar10.dataset.updated`; payload: the data dir and the facts its declaration names that `facts` holds."""
    declared = declared_keys(DATASET_UPDATED)
    return _emit(DATASET_UPDATED, data_dir, {key: value for key, value in facts.items() if key in declared})


def emit_monitor_drift(data_dir: str, summary: dict[str, Any]):
    """`cifar10.monitor.drift` from a monitor run's monitor.json: its facts the declaration names, but only the
    signals that fired."""
    fired = {name: signal for name, signal in summary["signals"].items() if signal["drift"]}
    facts = {key: summary[key] for key in declared_keys(MONITOR_DRIFT) - {"signals"}}
    return _emit(MONITOR_DRIFT, data_dir, facts | {"signals": fired})


def announce_moves(data_dir: str, registry: Path, moved: bool) -> list[dict[str, Any]]:
    """Emit `cifar10.model.promoted` for each move of the champion not announced yet, then count it in ANNOUNCED: a
    move whose event a crash or a kill lost is announced by the next promotion run or move by hand. Before the first
    count, the moves so far count as announced, but for the last one when `moved` (the caller has just made it)."""
    moves, path = store.alias_moves(registry), Path(registry) / ANNOUNCED
    if not moves:
        return []
    try:
        announced = read_json(path)["moves"]
    except (OSError, ValueError, KeyError, TypeError):
        announced = None
    if type(announced) is not int or not 0 <= announced <= len(moves):  # none yet, or not a count of these moves
        announced = len(moves) - moved  # from the caller's move
    for move in moves[announced:]:
        emit_model_promoted(data_dir, move, registry)
    write_json(path, {"moves": len(moves)})
    return moves[announced:]


def emit_model_promoted(data_dir: str, move: dict[str, Any], registry: Path):
    """`cifar10.model.promoted` for `move` (the line `store.move_alias` appended to `registry`'s aliases.jsonl):
    from/to version, their test accuracies from version.json (None: no version before, or a damaged one), the
    model id, by (promotion | hand), reason, at."""
    payload = {"from_version": move["from"], "to_version": move["to"], "model_id": move["model_id"]}
    payload |= {"from_accuracy": _accuracy(registry, move["from"]), "to_accuracy": _accuracy(registry, move["to"])}
    return _emit(MODEL_PROMOTED, data_dir, payload | {key: move[key] for key in ("by", "reason", "at")})


def _accuracy(registry: Path, version: str | None) -> float | None:
    with contextlib.suppress(store.RegistryError):  # a move by hand away from a damaged version still announces itself
        return store.read_version(registry, version).accuracy if version else None
    return None
