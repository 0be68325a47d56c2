"""The champion as the promote stage's cache key sees it: the baseline a challenger is judged against
(`baseline_id`), read through the registry's API (`cifarflow/registry/api.py`). (Which weights a
training run starts from is training's: `cifarflow/training/warm_start.py`.)"""

from __future__ import annotations

from pathlib import Path

from cifarflow.promotion.decision import NO_CHAMPION
from cifarflow.registry.api import Version, read_champion_version


def baseline_id(registry: Path, challenger_id: str) -> str:
    """The champion a challenger is (or was) judged against: the current champion, or, when the
    challenger is the champion already, the one it replaced. Identical reruns therefore see the
    same baseline as the run that promoted the model, which keeps their cache key stable.
    RegistryDamaged when the champion is damaged."""
    return baseline_of(read_champion_version(registry), challenger_id)


def baseline_of(champion: Version | None, challenger_id: str) -> str:
    """`baseline_id` for the champion already read (None: there is none)."""
    if champion is None:
        return NO_CHAMPION
    if champion.model_id == challenger_id:
        return champion.replaced or NO_CHAMPION
    return champion.model_id
