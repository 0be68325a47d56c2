"""What a training run is asked to do, and the per-epoch hook: shared by the run and every trainer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cifarflow.models.presets import Preset, get_preset

EpochHook = Callable[[int, int, dict[str, float]], None]  # (epoch (1-based), total, metrics)


@dataclass(frozen=True)
class TrainSettings:
    """The resolved training parameters (preset defaults filled in); the recipe comes with the preset."""

    model: str
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    warm_start_from: str | None = None  # a model file whose weights training starts from, if they fit

    @property
    def preset(self) -> Preset:
        return get_preset(self.model)
