"""The classic model: exact architecture behind the fitted input transform, and it learns."""

from __future__ import annotations

import keras  # a required dependency (pyproject.toml): a missing one is a broken install, not a skip
import numpy as np
import pytest

from cifarflow.data.transform import Normalization
from cifarflow.models.classic import make_classic_model
from cifarflow.models.presets import PRESETS, get_preset
from cifarflow.training.keras_fit import make_optimizer

UNIT = Normalization("unit", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
FITTED = Normalization("standardize", (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
CIFAR_SHAPE = {"num_classes": 10, "image_size": 32}  # the default data set's


def test_classic_model_matches_the_notebook():
    model = make_classic_model(UNIT, **CIFAR_SHAPE)
    assert model.count_params() == 394_970
    assert [type(layer).__name__ for layer in model.layers] == [
        "InputLayer",
        "Rescaling",  # the fitted normalization, applied to uint8 pixels
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    assert model.input.dtype == "uint8"
    conv = model.get_layer("conv")
    assert conv.filters == 12 and conv.kernel_size == (3, 3) and conv.padding == "same"
    assert model.get_layer("hidden").units == 128
    assert model.output_shape == (None, 10)
    probabilities = model(np.zeros((2, 32, 32, 3), np.uint8)).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_model_applies_the_fitted_transform_first(preset):
    """Its first layer computes exactly `Normalization.apply`: the arithmetic preprocess fitted."""
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for fitted in (UNIT, FITTED):
        model = get_preset(preset).build(fitted, **CIFAR_SHAPE)
        first = keras.Model(model.input, model.get_layer("normalize").output)
        np.testing.assert_allclose(first(pixels).numpy(), fitted.apply(pixels), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_names_its_penultimate_layer_the_one_its_head_reads(preset):
    """`Preset.features` is the layer the drift monitor takes embeddings from: the input of the head."""
    model = get_preset(preset).build(FITTED, **CIFAR_SHAPE)
    head = next(layer for layer in reversed(model.layers) if type(layer).__name__ == "Dense")
    assert head.input is model.get_layer(get_preset(preset).features).output


@pytest.mark.parametrize("preset", ["classic", "quick"])  # a softmax head and a logits head (fast: quick's, wider)
def test_the_embedder_gives_features_and_the_networks_own_probabilities(preset, tmp_path):
    from cifarflow.monitoring.embedding import load_embedder

    spec = get_preset(preset)
    model = spec.build(FITTED, **CIFAR_SHAPE)
    path = tmp_path / "model.keras"
    model.save(path)
    pixels = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    features, probabilities = load_embedder(preset, path)(pixels)
    width = model.get_layer(spec.features).output.shape[-1]
    assert features.shape == (3, width) and features.dtype == np.float32
    outputs = model(pixels).numpy()
    expected = outputs if spec.outputs == "probabilities" else np.exp(outputs) / np.exp(outputs).sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)


def test_unknown_model_and_optimizer_are_named():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        get_preset("nope")
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("sgd-ish", 0.1)


def test_classic_training_steps_lower_the_loss():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    y = keras.utils.to_categorical(rng.integers(0, 10, 64), 10)
    model = make_classic_model(UNIT, **CIFAR_SHAPE)
    model.compile(optimizer=make_optimizer("rmsprop", 1e-3), loss="categorical_crossentropy")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize(("side", "classes"), [(64, 12), (48, 2)])
def test_every_preset_builds_for_the_data_sets_image_size_and_classes(preset, side, classes):
    spec = get_preset(preset)
    spec.check_image_size(side)  # every preset takes 64
    model = spec.build(FITTED, num_classes=classes, image_size=side)
    assert model.input_shape == (None, side, side, 3) and model.output_shape == (None, classes)
    outputs = model(np.zeros((2, side, side, 3), np.uint8)).numpy()
    assert outputs.shape == (2, classes) and np.isfinite(outputs).all()


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_refuses_an_image_size_it_cannot_train_naming_the_sizes_it_takes(preset):
    spec = get_preset(preset)
    low, high = spec.image_sizes
    with pytest.raises(ValueError, match=rf"preset {preset} takes image sizes from {low} to {high} pixels \(got 4\)"):
        spec.check_image_size(4)
    with pytest.raises(ValueError, match=rf"\(got {high + 1}\)"):
        spec.check_image_size(high + 1)
    for side in (low, high):
        spec.check_image_size(side)


def test_the_classic_preset_trains_an_epoch_on_12_classes_at_64_px(tmp_path):
    from cifarflow.training.keras_fit import fit_keras
    from cifarflow.training.run import TrainSettings
    from tests.synthetic import write_features

    rng = np.random.default_rng(0)
    names = [f"class {i}" for i in range(12)]
    for split, count in (("train", 48), ("test", 24)):
        pixels = rng.integers(0, 256, (count, 64, 64, 3), dtype=np.uint8)
        write_features(tmp_path, pixels, rng.integers(0, 12, count), UNIT, split=split, label_names=names)
    keras.utils.set_random_seed(0)
    model = fit_keras(TrainSettings("classic", 1, 16, 1e-3, 0), tmp_path, [], verbose=0)
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 12)
    probabilities = get_preset("classic").predict(model, np.zeros((3, 64, 64, 3), np.uint8))
    assert probabilities.shape == (3, 12)
