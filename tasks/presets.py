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
    # airbench94 (tasks/airbench.py). learning_rate is airbench's decoupled lr: per 1024 examples of a
    # summed loss, before the Nesterov momentum normalisation; the optimizer is fixed by the recipe.
    "fast": Preset(
        name="fast",
        description="airbench94 ported to Keras: frozen patch-whitening conv, conv blocks 64/256/256 with "
        "BatchNorm + GELU, Nesterov SGD (decoupled wd), label smoothing 0.2, lookahead EMA, alternating flip "
        "+ translate, 6-view TTA; bf16 where the CPU has it.",
        epochs=10,
        batch_size=1024,
        optimizer="sgd_nesterov",
        learning_rate=11.5,
        trainer="airbench",
    ),
    "quick": Preset(
        name="quick",
        description="The airbench94 recipe on a narrow network (blocks 32/64/128) for few epochs: a "
        "minutes-long CPU run.",
        epochs=6,
        batch_size=512,
        optimizer="sgd_nesterov",
        learning_rate=11.5,
        trainer="airbench",
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(PRESETS))}") from None
