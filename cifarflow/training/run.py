"""Stage 3, train: features → a `.keras` model, history and timing, written whole; a killed run resumes."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from operator import attrgetter
from pathlib import Path

from cifarflow.data.transform import read_features
from cifarflow.files import atomic_directory, file_digest, read_json, write_json
from cifarflow.models.presets import Preset, get_preset
from cifarflow.outputs import StageOutput, read_whole

EpochHook = Callable[[int, int, dict[str, float]], None]  # (epoch (1-based), total, metrics)


@dataclass(frozen=True)
class TrainSettings:
    model: str
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    warm_start_from: str | None = None  # a model file whose weights training starts from, if they fit

    @property
    def preset(self) -> Preset:
        return get_preset(self.model)


@dataclass(frozen=True)
class TrainResult(StageOutput):
    model_dir: Path
    model_path: Path
    model_sha256: str
    history_path: Path
    train_seconds: float
    epochs: int
    params: int
    warm_start: dict | None = None  # WarmStartPlan.note with applied, reason (None: not requested)

    location = property(attrgetter("model_dir"))
    fingerprint = property(attrgetter("model_sha256"))


def read_journal(journal: Path) -> list[dict[str, float]]:
    """One record per finished epoch (the last write wins; a line cut by a kill is skipped)."""
    if not journal.is_file():
        return []
    records: dict[int, dict] = {}
    for line in journal.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[int(record["epoch"])] = record
    return [records[e] for e in sorted(records)]


def checkpoint_dir(model_dir: Path) -> Path:
    return model_dir.with_name(f".{model_dir.name}.inprogress")


def train_model(
    settings: TrainSettings,
    features_dir: Path,
    model_dir: Path,
    on_epoch: EpochHook | None = None,
    verbose: int | None = None,
    warm_start: dict | None = None,
) -> TrainResult:
    """Train with the preset's trainer, resuming from a killed run's checkpoint; `warm_start`: `WarmStartPlan.note`."""
    import keras  # here: planning and config checks never pay for TensorFlow

    from cifarflow.training.callbacks import AtomicBackupAndRestore, EpochRecorder, WarmStart

    work = checkpoint_dir(model_dir)
    work.mkdir(parents=True, exist_ok=True)
    journal = work / "epochs.jsonl"
    keras.utils.set_random_seed(settings.seed)
    # journal before checkpoint: a kill between the two re-runs that epoch, rewriting its journal line
    warm = WarmStart(settings.warm_start_from, settings.preset) if settings.warm_start_from else None
    callbacks = [
        *([warm] if warm else []),  # before the restore: a resumed run continues from its own checkpoint
        EpochRecorder(journal, settings.epochs, on_epoch),
        AtomicBackupAndRestore(str(work / "backup")),
    ]
    if verbose is None:  # one line per epoch: the caller's (`on_epoch`) or else Keras' own (a bar on a terminal)
        verbose = 0 if on_epoch else 1 if sys.stdout.isatty() else 2
    model = settings.preset.train(settings, features_dir, callbacks, verbose)
    history = read_journal(journal)
    with atomic_directory(model_dir) as staging:
        model.save(staging / "model.keras")
        write_json(staging / "history.json", history)
        features = read_features(features_dir)
        summary = {
            "settings": asdict(settings),
            "label_names": features.label_names,  # the model's outputs, in order, and its input side
            "image_size": features.image_size,
            "train_seconds": sum(r["seconds"] for r in history),
            "params": model.count_params(),
            "epochs_completed": len(history),
            "model_sha256": file_digest(staging / "model.keras"),
            "warm_start": (warm_start or {}) | ({"applied": warm.applied, "reason": warm.reason} if warm else {})
            or None,
        }
        write_json(staging / "train.json", summary)
    shutil.rmtree(work, ignore_errors=True)
    return load_train_result(model_dir)


def load_train_result(model_dir: Path) -> TrainResult:
    summary = read_json(model_dir / "train.json")
    return TrainResult(
        model_dir=model_dir,
        model_path=model_dir / "model.keras",
        model_sha256=summary["model_sha256"],
        history_path=model_dir / "history.json",
        train_seconds=summary["train_seconds"],
        epochs=summary["epochs_completed"],
        params=summary["params"],
        warm_start=summary.get("warm_start"),
    )


def find_model(model_dir: Path) -> TrainResult | None:
    """The model in `model_dir` if it is whole and its file still matches its recorded sha256."""
    result = read_whole(lambda: load_train_result(model_dir))
    if result is None or not result.model_path.is_file() or file_digest(result.model_path) != result.model_sha256:
        return None
    return result
