"""The event a retrain listens for: `cifar10.dataset.updated`, emitted when a batch is added or
withdrawn. `deployments/prefect.yaml` declares a trigger on it; the payload carries what the UI and
the triggered run need (the data directory, the new version and the counts)."""

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
