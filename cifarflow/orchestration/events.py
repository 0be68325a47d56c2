"""The events the product emits.

`cifar10.dataset.updated`: a batch was added or withdrawn. `deployments/prefect.yaml` declares a retrain
trigger on it; the payload carries what the UI and the triggered run need (the data directory, the new
version and the counts). `cifar10.monitor.drift`: a monitor run found drift (flows/monitor_flow.py).
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

DATASET_UPDATED = "cifar10.dataset.updated"
RESOURCE_PREFIX = "cifar10.dataset"


PAYLOAD_KEYS = (
    "dataset_version",
    "previous_dataset_version",
    "batch_id",
    "added",
    "withdrawn",
    "train_images",
    "class_counts",
)


def emit_dataset_updated(data_dir: str, facts: dict[str, Any]):
    """Emit the event (to the server in PREFECT_API_URL; without one, Prefect drops it quietly).
    The payload is the data dir plus the facts of `PAYLOAD_KEYS` that `facts` (a summary) holds."""
    payload = {"data_dir": data_dir} | {key: facts[key] for key in PAYLOAD_KEYS if key in facts}
    return emit_event(
        event=DATASET_UPDATED,
        resource={"prefect.resource.id": f"{RESOURCE_PREFIX}.{data_dir}", "prefect.resource.name": data_dir},
        payload=payload,
    )


MONITOR_DRIFT = "cifar10.monitor.drift"
MONITOR_PREFIX = "cifar10.monitor"


def emit_monitor_drift(data_dir: str, summary: dict[str, Any]):
    """Emit `cifar10.monitor.drift` for a monitor run that found drift (`summary`: its monitor.json, so a
    run that finishes a killed one sends the same event). Payload: the data dir, the window, the model
    version, the signals that fired (with their statistics) and the report folder. Nothing retrains on
    it by default: drift without new labels gives a retrain nothing new to learn."""
    payload = {
        "data_dir": data_dir,
        "window": summary["window"],
        "images": summary["images"],
        "model_version": summary["model_version"],
        "signals": {name: signal for name, signal in summary["signals"].items() if signal["drift"]},
        "report": summary["report"],
    }
    return emit_event(
        event=MONITOR_DRIFT,
        resource={"prefect.resource.id": f"{MONITOR_PREFIX}.{data_dir}", "prefect.resource.name": data_dir},
        payload=payload,
    )
