"""The events the product emits: `cifar10.dataset.updated` (a batch added or withdrawn; the retrain
trigger in `deployments/prefect.yaml` listens for it) and `cifar10.monitor.drift` (a monitor run found drift)."""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

DATASET_UPDATED = "cifar10.dataset.updated"
MONITOR_DRIFT = "cifar10.monitor.drift"
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
