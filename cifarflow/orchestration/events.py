"""The event a retrain listens for: `cifar10.dataset.updated`, emitted when a batch is added or
withdrawn. `deployments/prefect.yaml` declares a trigger on it; the payload carries what the UI and
the triggered run need (the data directory, the new version and the counts)."""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

DATASET_UPDATED = "cifar10.dataset.updated"
RESOURCE_PREFIX = "cifar10.dataset"


def emit_dataset_updated(data_dir: str, payload: dict[str, Any]):
    """Emit the event (to the server in PREFECT_API_URL; without one, Prefect drops it quietly)."""
    return emit_event(
        event=DATASET_UPDATED,
        resource={"prefect.resource.id": f"{RESOURCE_PREFIX}.{data_dir}", "prefect.resource.name": data_dir},
        payload={"data_dir": data_dir, **payload},
    )
