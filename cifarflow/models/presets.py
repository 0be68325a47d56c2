"""Model presets by name: what `--model` accepts. A preset is one self-contained unit: one entry here
names everything about it (how to build, load, train, predict and serve its network, what the network
outputs, its size, recipe and defaults), so adding a preset is one entry here plus its own modules.

Builders, loaders, trainers, predictors and serving functions are `"module:function"` references
resolved on first use, so this module imports no TensorFlow and a bad `--model` is rejected in
milliseconds. Their contracts:

* builder(normalization, recipe, *, num_classes, seed) → uncompiled `keras.Model` taking uint8
  pixels, applying the fitted normalization in its first layer, its last layer giving `outputs`;
* loader(path) → the network saved in the `.keras` file at `path`, without training state. It
  registers whatever the network needs to deserialize (custom layers), so it works in a fresh process;
  every place that loads a model (evaluation, export, prediction, warm start) goes through it;
* trainer(settings, features_dir, callbacks, verbose) → the trained `keras.Model`;
* predictor(model, pixels, *, outputs) → (N, classes) probabilities, `outputs` being the preset's;
* serving(model, *, outputs) → a TensorFlow function of uint8 pixels giving the predictor's
  probabilities, traced into the exported artifact (`cifarflow.registry.export`).

`outputs` says what the network's last layer gives: `"logits"` (the predictor applies the softmax) or
`"probabilities"` (a softmax head: used as they are). `features` names the layer whose output is the
network's penultimate representation, the embedding the drift monitor compares (`cifarflow.monitoring`).
`params` is the network's documented size, which the tests check against `count_params()`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

from cifarflow.models.recipes import QUICK_WIDTHS, AirbenchRecipe, KerasFitRecipe

NetworkOutput = Literal["logits", "probabilities"]


def resolve(reference: str) -> Callable[..., Any]:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    builder: str
    loader: str
    trainer: str
    predictor: str
    serving: str  # the predictor's arithmetic as a TensorFlow graph, for the exported artifact
    outputs: NetworkOutput  # what the network's last layer gives
    features: str  # the layer giving the penultimate representation (the embedding drift is measured on)
    tta: str  # how the predictor augments at test time, for the report ("none" if it does not)
    recipe: KerasFitRecipe | AirbenchRecipe = field(repr=False)
    epochs: int
    batch_size: int
    learning_rate: float
    normalization: str  # the default fitted transform: "unit" or "standardize"
    params: int  # the network's count_params() with 10 classes, as documented (a test checks it)
    min_accuracy: float | None = None  # promotion floor: never promote a model of this preset below it

    def __post_init__(self):
        if self.outputs not in get_args(NetworkOutput):
            raise ValueError(f"{self.name}: outputs must be one of {get_args(NetworkOutput)}, not {self.outputs!r}")

    def build(self, normalization, recipe=None, *, num_classes: int = 10, seed: int | None = None):
        """The uncompiled network; `recipe` overrides the preset's (tests and benchmarks)."""
        return resolve(self.builder)(normalization, recipe or self.recipe, num_classes=num_classes, seed=seed)

    def load(self, path):
        """The network saved at `path` (a `.keras` file), in any process: see the loader's contract."""
        return resolve(self.loader)(path)

    def train(self, settings, features_dir, callbacks, verbose):
        return resolve(self.trainer)(settings, features_dir, callbacks, verbose)

    def predict(self, model, pixels):
        return resolve(self.predictor)(model, pixels, outputs=self.outputs)

    def serving_function(self, model):
        return resolve(self.serving)(model, outputs=self.outputs)


AIRBENCH_TTA = "mirror + ±1px translations, 6 views, logits averaged (airbench level 2)"

PRESETS: dict[str, Preset] = {
    "classic": Preset(
        name="classic",
        description="The classic notebook's CNN: Conv2D(12) → MaxPool → Dense(128) → Dense(10); "
        "RMSprop, categorical cross-entropy, 15 epochs, batch 32 (≈61.5% on official data).",
        builder="cifarflow.models.classic:make_classic_model",
        loader="cifarflow.models.classic:load_classic_model",
        trainer="cifarflow.training.keras_fit:fit_keras",
        predictor="cifarflow.evaluation.scoring:predict_plain",
        serving="cifarflow.evaluation.scoring:serve_plain",
        outputs="probabilities",  # a softmax head
        features="hidden",  # Dense(128), before the softmax head
        tta="none",
        recipe=KerasFitRecipe(optimizer="rmsprop"),
        epochs=15,
        batch_size=32,
        learning_rate=0.001,
        normalization="unit",
        params=394_970,
    ),
    # airbench94_muon. The batch is smaller than airbench's 2000: a CPU gains nothing from big batches,
    # and more steps per epoch buy accuracy (the Muon lr is scaled by √½ to match, 0.24 → 0.17).
    "fast": Preset(
        name="fast",
        description="airbench94_muon ported to Keras: frozen patch-whitening conv, conv blocks 64/256/256 with "
        "BatchNorm + GELU, Muon for conv kernels + Nesterov SGD for biases/head, linear decay, label smoothing "
        "0.2, alternating flip + translate, 6-view TTA; bf16 where the CPU has it.",
        builder="cifarflow.models.airbench:make_airbench_net",
        loader="cifarflow.models.airbench:load_airbench_net",
        trainer="cifarflow.training.airbench_loop:fit_airbench",
        predictor="cifarflow.evaluation.scoring:predict_tta",
        serving="cifarflow.evaluation.scoring:serve_tta",
        outputs="logits",
        features="flatten",  # the pooled last block, before the linear head
        tta=AIRBENCH_TTA,
        recipe=AirbenchRecipe(),
        epochs=9,
        batch_size=1000,
        learning_rate=0.17,
        normalization="standardize",
        params=1_973_944,
        min_accuracy=0.85,  # reaches ≈0.91 on the full data; below 0.85 something went wrong
    ),
}


PRESETS["quick"] = replace(
    PRESETS["fast"],
    name="quick",
    description="The `fast` recipe on a narrow network (blocks 32/64/128): a minutes-long CPU run.",
    recipe=AirbenchRecipe(widths=QUICK_WIDTHS),
    epochs=6,
    params=295_544,
    min_accuracy=0.80,  # reaches ≈0.87 on the full data
)


# old preset names, still accepted for now: each use prints a one-line deprecation notice
RENAMED = {"seed": "classic"}


def preset_name(name: str) -> str:
    """`name`, or the current name of a renamed preset (with a notice on stderr). ValueError if unknown."""
    if name in RENAMED:
        print(f"note: the preset {name!r} is now {RENAMED[name]!r}; the old name will be removed", file=sys.stderr)
        return RENAMED[name]
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return name


def get_preset(name: str) -> Preset:
    """The preset called `name` (an old name is accepted: `preset_name`). ValueError if unknown."""
    return PRESETS[preset_name(name)]
