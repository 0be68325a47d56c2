"""The events the product emits: `cifar10.dataset.updated` (a batch added or withdrawn; the retrain trigger in
`deployments/prefect.yaml` listens for it), `cifar10.model.promoted` (the champion moved; the monitor's trigger
listens for it) and `cifar10.monitor.drift` (a monitor run found drift)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from prefect.events import emit_event

from cifarflow.files import read_json, write_json
from cifarflow.registry import store

DATASET_UPDATED = "cifar10.dataset.updated"
MODEL_PROMOTED = "cifar10.model.promoted"
MONITOR_DRIFT = "cifar10.monitor.drift"
ANNOUNCED = "announced.json"  # in the registry: {"moves": how many moves of aliases.jsonl have had their event}
PAYLOAD_KEYS = (
    "dataset_version",
    "previous_dataset_version",
    "batch_id",
    "added",
    "withdrawn",
    "train_images",
    "class_counts",
)


def _emit(event: str, data_dir: str, payload: dict[str, Any]):
    """`event` about the data dir to the server in PREFECT_API_URL (without one, Prefect drops it quietly)."""
    resource = {"prefect.resource.id": f"{event.rsplit('.', 1)[0]}.{data_dir}", "prefect.resource.name": data_dir}
    return emit_event(event=event, resource=resource, payload={"data_dir": data_dir} | payload)


def emit_dataset_updated(data_dir: str, facts: dict[str, Any]):
    """`cifar10.dataset.updated`; payload: the data dir and the facts of `PAYLOAD_KEYS` that `facts` holds."""
    return _emit(DATASET_UPDATED, data_dir, {key: facts[key] for key in PAYLOAD_KEYS if key in facts})


def emit_monitor_drift(data_dir: str, summary: dict[str, Any]):
    """`cifar10.monitor.drift` from a monitor run's monitor.json: window, model version, signals that fired, report."""
    fired = {name: signal for name, signal in summary["signals"].items() if signal["drift"]}
    keys = ("window", "images", "model_version", "report")
    return _emit(MONITOR_DRIFT, data_dir, {key: summary[key] for key in keys} | {"signals": fired})


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
