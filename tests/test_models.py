"""The seed model: exact architecture, and it learns."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cifarflow.models.seed import make_model, make_optimizer, make_seed_model  # noqa: E402


def test_seed_model_matches_the_notebook():
    model = make_seed_model()
    assert model.count_params() == 394_970
    assert [type(layer).__name__ for layer in model.layers] == [
        "InputLayer",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    conv = model.get_layer("conv")
    assert conv.filters == 12 and conv.kernel_size == (3, 3) and conv.padding == "same"
    assert model.get_layer("hidden").units == 128
    assert model.output_shape == (None, 10)
    probabilities = model(np.zeros((2, 32, 32, 3), np.float32)).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_unknown_model_and_optimizer_are_named():
    with pytest.raises(ValueError, match="no builder for model 'nope'"):
        make_model("nope")
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("sgd-ish", 0.1)


def test_seed_training_steps_lower_the_loss():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((64, 32, 32, 3), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 10, 64), 10)
    model = make_seed_model()
    model.compile(optimizer=make_optimizer("rmsprop", 1e-3), loss="categorical_crossentropy")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before
