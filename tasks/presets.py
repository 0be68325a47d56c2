"""Model presets by name: what `--model` accepts, with each preset's training defaults.

Kept free of TensorFlow imports so that a bad `--model` is rejected in milliseconds. The
builders live in `tasks/models.py`; `trainer` names how the preset trains (`keras_fit` is the
plain `model.fit` loop of the classic notebook).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    trainer: str = "keras_fit"


PRESETS: dict[str, Preset] = {
    "seed": Preset(
        name="seed",
        description="The classic notebook's CNN: Conv2D(12) → MaxPool → Dense(128) → Dense(10); "
        "RMSprop, categorical cross-entropy, 15 epochs, batch 32 (≈61.5% on official data).",
        epochs=15,
        batch_size=32,
        optimizer="rmsprop",
        learning_rate=0.001,
    ),
    # airbench (tasks/airbench.py, tasks/airbench_train.py), Muon recipe. learning_rate is Muon's for the
    # conv kernels; the SGD groups (biases, head) keep airbench94_muon's rates. The batch is smaller than
    # airbench's 2000: a CPU gains nothing from big batches, and more steps per epoch buy accuracy.
    "fast": Preset(
        name="fast",
        description="airbench94_muon ported to Keras: frozen patch-whitening conv, conv blocks 64/256/256 with "
        "BatchNorm + GELU, Muon for conv kernels + Nesterov SGD for biases/head, linear decay, label smoothing "
        "0.2, alternating flip + translate, 6-view TTA; bf16 where the CPU has it.",
        epochs=9,
        batch_size=1000,
        optimizer="muon",
        learning_rate=0.17,
        trainer="airbench",
    ),
    "quick": Preset(
        name="quick",
        description="The `fast` recipe on a narrow network (blocks 32/64/128): a minutes-long CPU run.",
        epochs=6,
        batch_size=1000,
        optimizer="muon",
        learning_rate=0.17,
        trainer="airbench",
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(PRESETS))}") from None
