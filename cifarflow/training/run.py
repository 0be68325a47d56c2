"""Stage 3, train: features → a trained `.keras` model, its per-epoch history and timing.

Training checkpoints every epoch (`AtomicBackupAndRestore`, a kill-safe `BackupAndRestore`) in a
directory beside the final model, so a killed run resumes from its last finished epoch. The final
model directory is written whole and renamed into place, so a model directory that exists is
always complete.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from cifarflow.files import atomic_directory, file_digest, read_json, write_json
from cifarflow.outputs import StageOutput, read_whole
from cifarflow.training.settings import EpochHook, TrainSettings


@dataclass(frozen=True)
class TrainResult(StageOutput):
    model_dir: Path
    model_path: Path
    model_sha256: str
    history_path: Path
    train_seconds: float
    epochs: int
    params: int
    warm_start: dict | None = None  # requested, champion_id, applied, reason (None: from scratch)

    @property
    def location(self) -> Path:
        return self.model_dir

    @property
    def fingerprint(self) -> str:
        return self.model_sha256


def read_journal(journal: Path) -> list[dict[str, float]]:
    """Finished epochs so far, one record per epoch (the last write wins after a resume)."""
    if not journal.is_file():
        return []
    records: dict[int, dict] = {}
    for line in journal.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        records[int(record["epoch"])] = record
    return [records[e] for e in sorted(records)]


def checkpoint_dir(model_dir: Path) -> Path:
    """Where an unfinished training keeps its journal and checkpoint: beside the final model
    directory, so it survives a kill; removed once the model is written."""
    return model_dir.with_name(f".{model_dir.name}.inprogress")


def train_model(
    settings: TrainSettings,
    features_dir: Path,
    model_dir: Path,
    on_epoch: EpochHook | None = None,
    verbose: int | None = None,
    warm_start: dict | None = None,
) -> TrainResult:
    """Train with the preset's trainer, resuming from a checkpoint left by an interrupted run, and
    write model_dir whole. `warm_start` describes the request (`WarmStartPlan.note`, see
    `cifarflow.training.warm_start`); with `settings.warm_start_from` set, training starts from those weights."""
    import keras  # imported here so that planning and config checks never pay for TensorFlow

    from cifarflow.training.callbacks import AtomicBackupAndRestore, EpochRecorder, WarmStart

    work = checkpoint_dir(model_dir)
    work.mkdir(parents=True, exist_ok=True)
    journal = work / "epochs.jsonl"
    keras.utils.set_random_seed(settings.seed)
    # The journal is written before the checkpoint: a kill between the two re-runs that epoch
    # and overwrites its journal line, so history and weights never disagree. Both live outside
    # the final model directory, so a killed run resumes from its last finished epoch.
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
        summary = {
            "settings": asdict(settings),
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
    """The model in `model_dir` if it is complete and its file still matches its recorded sha256."""
    result = read_whole(lambda: load_train_result(model_dir))
    if result is None or not result.model_path.is_file() or file_digest(result.model_path) != result.model_sha256:
        return None
    return result
