"""Model presets by name (what `--model` accepts) and their recipes. Builders, trainers and serving functions are
`"module:function"` references resolved on first use, so this module imports no TensorFlow."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal


@dataclass(frozen=True)
class KerasFitRecipe:
    """`model.fit` with a stock Keras optimizer and categorical cross-entropy (the classic notebook)."""

    optimizer: str = "rmsprop"  # a name `cifarflow.training.keras_fit.make_optimizer` knows


@dataclass(frozen=True)
class AirbenchRecipe:
    """airbench94_muon (Keller Jordan); Muon's lr is the preset's `learning_rate`, SGD's per summed-loss step."""

    widths: tuple[int, int, int] = (64, 256, 256)
    momentum: float = 0.85  # Nesterov SGD's
    weight_decay: float = 2e-6  # per example, coupled (L2), as torch SGD
    label_smoothing: float = 0.2
    whiten_bias_epochs: int = 3  # the whitening bias trains for the first epochs only
    whiten_eps: float = 5e-4  # added to the patch covariance's eigenvalues: caps the whitening gain
    translate: int = 2  # pixels of random reflect-padded translation
    bn_momentum: float = 0.6
    scaling_factor: float | None = None  # logits × this; None: 1 / the last width
    head_unit_std: bool = True  # head init rescaled to unit std
    # a step sums the gradients of micro-batches of this many input pixels (images × side²): its memory bound,
    # whatever the image size (1,000 images of CIFAR-10's size)
    micro_batch_pixels: int = 1_024_000
    whiten_pixels: int = 5_120_000  # input pixels of the training images the whitening is fitted on (5,000 CIFAR-10's)
    muon_momentum: float = 0.6
    bias_lr: float = 0.053
    head_lr: float = 0.67


NetworkOutput = Literal["logits", "probabilities"]


def resolve(reference: str) -> Callable[..., Any]:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    builder: str
    trainer: str
    serving: str  # the network's probabilities as a TensorFlow function: evaluation, export and prediction run it
    outputs: NetworkOutput  # what the network's last layer gives
    features: str  # the layer giving the penultimate representation (the embedding drift is measured on)
    tta: str  # how `serving` augments at test time, for the report ("none" if it does not)
    recipe: KerasFitRecipe | AirbenchRecipe = field(repr=False)
    epochs: int
    batch_size: int
    learning_rate: float
    normalization: str  # the default fitted transform: "unit" or "standardize"
    params: int  # the network's count_params() on CIFAR-10 (the default data set), as documented (a test checks it)
    image_sizes: tuple[int, int]  # the smallest and largest image side it trains at (memory and architecture)
    min_accuracy: float | None = None  # promotion floor: never promote a model of this preset below it

    def check_image_size(self, side: int) -> None:
        """ValueError naming the sizes this preset takes when it cannot train on side × side images."""
        low, high = self.image_sizes
        if not low <= side <= high:
            raise ValueError(f"preset {self.name} takes image sizes from {low} to {high} pixels (got {side})")

    def build(self, normalization, recipe=None, *, num_classes: int, image_size: int, seed: int | None = None):
        """The uncompiled network of (N, image_size, image_size, 3) uint8 → (N, num_classes); `recipe` overrides the
        preset's (tests and benchmarks)."""
        builder = resolve(self.builder)
        return builder(normalization, recipe or self.recipe, num_classes=num_classes, image_size=image_size, seed=seed)

    def load(self, path):
        """The `.keras` network at `path`, in any process (the builder's module registers its custom layers)."""
        import keras

        resolve(self.builder)
        return keras.models.load_model(path, compile=False)

    def train(self, settings, features_dir, callbacks, verbose):
        return resolve(self.trainer)(settings, features_dir, callbacks, verbose)

    def predict(self, model, pixels):
        """(N, classes) float32 probabilities of uint8 pixels through the serving function, in batches."""
        from cifarflow.models.scoring import predict_in_batches

        return predict_in_batches(self.serving_function(model), pixels)

    def serving_function(self, model):
        return resolve(self.serving)(model, outputs=self.outputs)


PRESETS: dict[str, Preset] = {
    "classic": Preset(
        name="classic",
        description="The classic notebook's CNN: Conv2D(12) → MaxPool → Dense(128) → Dense(classes); "
        "RMSprop, categorical cross-entropy, 15 epochs, batch 32 (≈61.5% on official data).",
        builder="cifarflow.models.classic:make_classic_model",
        trainer="cifarflow.training.keras_fit:fit_keras",
        serving="cifarflow.models.scoring:serve_plain",
        outputs="probabilities",  # a softmax head
        features="hidden",  # Dense(128), before the softmax head
        tta="none",
        recipe=KerasFitRecipe(optimizer="rmsprop"),
        epochs=15,
        batch_size=32,
        learning_rate=0.001,
        normalization="unit",
        params=394_970,
        image_sizes=(8, 256),  # Dense(128) over (S/2)²·12 inputs: 25 M weights at 256
    ),
    # airbench94_muon with batch 1000, not 2000 (a CPU gains nothing from big batches), so Muon lr 0.24 × √½
    "fast": Preset(
        name="fast",
        description="airbench94_muon ported to Keras: frozen patch-whitening conv, conv blocks 64/256/256 with "
        "BatchNorm + GELU, Muon for conv kernels + Nesterov SGD for biases/head, linear decay, label smoothing "
        "0.2, alternating flip + translate, 6-view TTA; bf16 where the CPU has it.",
        builder="cifarflow.models.airbench:make_airbench_net",
        trainer="cifarflow.training.airbench_loop:fit_airbench",
        serving="cifarflow.models.scoring:serve_tta",
        outputs="logits",
        features="flatten",  # the pooled last block, before the linear head
        tta="mirror + ±1px translations, 6 views, logits averaged (airbench level 2)",
        recipe=AirbenchRecipe(),
        epochs=9,
        batch_size=1000,
        learning_rate=0.17,
        normalization="standardize",
        params=1_973_944,
        image_sizes=(16, 256),  # three halvings of the whitened (S − 1) map leave ≥ 1×1; memory is per pixel
        min_accuracy=0.85,  # reaches ≈0.91 on the full data; below 0.85 something went wrong
    ),
}


PRESETS["quick"] = replace(
    PRESETS["fast"],
    name="quick",
    description="The `fast` recipe on a narrow network (blocks 32/64/128): a minutes-long CPU run.",
    recipe=AirbenchRecipe(widths=(32, 64, 128)),
    epochs=6,
    params=295_544,
    min_accuracy=0.80,  # reaches ≈0.87 on the full data
)


# old preset names, still accepted for now: each use prints a one-line deprecation notice
RENAMED = {"seed": "classic"}


def preset_name(name: str) -> str:
    """`name`, or a renamed preset's current name (with a notice on stderr); ValueError if unknown."""
    if name in RENAMED:
        print(f"note: the preset {name!r} is now {RENAMED[name]!r}; the old name will be removed", file=sys.stderr)
        return RENAMED[name]
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return name


def get_preset(name: str) -> Preset:
    """The preset called `name`, an old name too, silently (stored records keep theirs); ValueError if unknown."""
    return PRESETS[RENAMED.get(name) or preset_name(name)]
